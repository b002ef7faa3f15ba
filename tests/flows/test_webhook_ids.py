"""Webhook delivery ids of any length get a clear answer: a 400 over the cap, and a long webhook id still works."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook

from api.webhooks.service import MAX_DELIVERY_ID
from tests.flows.conftest import dag, task


def signed(secret: str, body: dict[str, Any], msg_id: str) -> tuple[bytes, dict[str, str]]:
    raw = orjson.dumps(body)
    at = datetime.now(UTC)
    return raw, {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, raw.decode()),
        "content-type": "application/json",
    }


async def test_delivery_id_length(gateway_app: Any) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    async with gw.client("alice", tenant) as c:
        await c.post("/v1/flows", json={"definition": dag(tenant, task("a"), flow_id="hooked")})
        hooks = []
        for webhook_id in (None, "w" * 240):  # a generated id, and the longest a caller might choose
            created = await c.post("/v1/webhook-configs", json={"flow_id": "hooked", "webhook_id": webhook_id})
            assert created.status_code == 201, created.text
            hooks.append(created.json())
        short, long_named = hooks
        call = {"payload": {"n": 1}}

        raw, headers = signed(short["secret"], call, "m" * 244)
        refused = await c.post(short["url"], content=raw, headers=headers)
        assert refused.status_code == 400 and str(MAX_DELIVERY_ID) in refused.json()["detail"], refused.text

        raw, headers = signed(short["secret"], call, "m" * MAX_DELIVERY_ID)
        assert (await c.post(short["url"], content=raw, headers=headers)).status_code == 202

        raw, headers = signed(long_named["secret"], call, "msg_" + "x" * 60)
        first = await c.post(long_named["url"], content=raw, headers=headers)
        assert first.status_code == 202, first.text
        again = await c.post(long_named["url"], content=raw, headers=headers)
        assert again.status_code == 202 and again.json() == first.json()  # still once per delivery id
