"""Webhook configurations and signed webhook calls (Standard Webhooks), in-process."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook

from tests.flows.conftest import dag, task


def _signed(
    secret: str, body: dict[str, Any], *, msg_id: str | None = None, at: datetime | None = None
) -> tuple[bytes, dict[str, str]]:
    raw = orjson.dumps(body)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, at, raw.decode())
    return raw, {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


async def test_signed_calls_start_a_run_once_and_bad_signatures_get_401(gateway_app: Any) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    async with gw.client("alice", tenant) as c:
        await c.post("/v1/flows", json={"definition": dag(tenant, task("a"), flow_id="on-ticket")})
        created = await c.post(
            "/v1/webhook-configs",
            json={"flow_id": "on-ticket", "input_mapping": {"ticket": "{{ payload.id }}", "from": "{{ source }}"}},
        )
        assert created.status_code == 201, created.text
        config = created.json()
        secret, webhook_id = config["secret"], config["webhook_id"]
        assert secret.startswith("whsec_") and config["url"] == f"/v1/webhooks/{webhook_id}"
        shown = (await c.get(f"/v1/webhook-configs/{webhook_id}")).json()
        assert "secret" not in shown and secret not in orjson.dumps(shown).decode()
        assert secret not in (await c.get("/v1/webhook-configs")).text

        call = {"webhook_id": webhook_id, "payload": {"id": "T-42"}, "headers": {}, "source": "n8n"}
        raw, headers = _signed(secret, call)
        outsider = c.build_request("POST", f"/v1/webhooks/{webhook_id}", content=raw, headers=headers)
        outsider.headers.pop("Authorization")  # webhook callers authenticate with the signature alone
        first = await c.send(outsider)
        assert first.status_code == 202, first.text
        again = await c.post(f"/v1/webhooks/{webhook_id}", content=raw, headers=headers)
        assert again.status_code == 202 and again.json() == first.json()
        assert again.headers["Idempotent-Replayed"] == "true"
        run = (await c.get(f"/v1/runs/{first.json()['run_id']}")).json()
        assert run["input"] == {"ticket": "T-42", "from": "n8n"} and run["flow_id"] == "on-ticket"

        tampered = raw.replace(b"T-42", b"T-43")
        stale_raw, stale = _signed(secret, call, at=datetime.now(UTC) - timedelta(minutes=10))
        wrong_raw, wrong = _signed("whsec_" + "QUJD" * 8, call)  # a valid secret, not this webhook's
        missing = {k: v for k, v in headers.items() if k != "webhook-signature"}
        for name, body, hdrs in (
            ("tampered", tampered, headers),
            ("stale", stale_raw, stale),
            ("wrong secret", wrong_raw, wrong),
            ("unsigned", raw, missing),
        ):
            r = await c.post(f"/v1/webhooks/{webhook_id}", content=body, headers=hdrs)
            assert r.status_code == 401, name
            assert r.json()["error"] == "unauthorized" and secret not in r.text

        assert (await c.post("/v1/webhooks/nope", content=raw, headers=headers)).status_code == 404
        disabled = await c.put(f"/v1/webhook-configs/{webhook_id}", json={"enabled": False})
        assert disabled.json()["enabled"] is False and "secret" not in disabled.json()
        raw2, headers2 = _signed(secret, call)
        assert (await c.post(f"/v1/webhooks/{webhook_id}", content=raw2, headers=headers2)).status_code == 404
        rotated = (
            await c.put(f"/v1/webhook-configs/{webhook_id}", json={"enabled": True, "rotate_secret": True})
        ).json()
        assert rotated["secret"] != secret
        raw3, headers3 = _signed(secret, call)
        assert (await c.post(f"/v1/webhooks/{webhook_id}", content=raw3, headers=headers3)).status_code == 401
        raw4, headers4 = _signed(rotated["secret"], call)
        assert (await c.post(f"/v1/webhooks/{webhook_id}", content=raw4, headers=headers4)).status_code == 202
    runs = await gw.gateway.db.fetch("SELECT trigger FROM flow_runs_audit WHERE tenant_id = $1", tenant)
    assert len(runs) == 2 and {r["trigger"]["via"] for r in runs} == {"webhook"}
    deliveries = await gw.gateway.db.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1", webhook_id
    )
    assert deliveries == 2


async def test_webhook_configs_are_tenant_scoped(gateway_app: Any) -> None:
    gw = await gateway_app()
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    async with gw.client("alice", tenant) as owner, gw.client("alice", f"t-{uuid.uuid4().hex[:6]}") as intruder:
        config = (await owner.post("/v1/webhook-configs", json={"flow_id": "f"})).json()
        path = f"/v1/webhook-configs/{config['webhook_id']}"
        assert (await intruder.get(path)).status_code == 404
        assert (await intruder.put(path, json={"enabled": False})).status_code == 404
        assert (await intruder.delete(path)).status_code == 404
        assert (await intruder.get("/v1/webhook-configs")).json()["items"] == []
        bad = await owner.post("/v1/webhook-configs", json={"flow_id": "f", "secret": "not base64 at all!!"})
        assert bad.status_code == 400
        assert (await owner.delete(path)).status_code == 204
        assert (await owner.get(path)).status_code == 404
