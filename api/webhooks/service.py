"""Webhook configurations (secrets stored for verification, shown once) and signed webhook intake."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from typing import Any

import orjson
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api.deps import Gateway
from api.errors import BadRequest, Conflict, NotFound, Unauthorized
from api.flows.runs import service as runs
from api.flows.runs.schemas import RunBody
from api.webhooks.schemas import WebhookCall, WebhookConfigBody, WebhookConfigUpdate
from common.flows.depth import too_deep
from common.flows.templates import TemplateError, render
from common.platform.credentials import Principal

_COLUMNS = "webhook_id, flow_id, enabled, webhook_config, user_id, created_at, updated_at"
MAX_DELIVERY_ID = 128  # the `webhook-id` header (Standard Webhooks message ids are about 30 characters)
_MAX_REQUEST_ID = 255


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _check_secret(secret: str) -> None:
    """`whsec_` then at least 16 bytes of strict base64, as Standard Webhooks secrets are."""
    body = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except ValueError:
        key = b""
    if not secret.startswith("whsec_") or len(key) < 16:
        raise BadRequest([{"field": "body.secret", "message": "not a Standard Webhooks secret"}]) from None


def public(row: Any, secret: str | None = None) -> dict[str, Any]:
    config = row["webhook_config"] or {}
    return {
        "webhook_id": row["webhook_id"],
        "flow_id": row["flow_id"],
        "enabled": row["enabled"],
        "input_mapping": config.get("input_mapping", {}),
        "description": config.get("description", ""),
        "user_id": row["user_id"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "url": f"/v1/webhooks/{row['webhook_id']}",
        "secret": secret,
    }


async def create(gw: Gateway, who: Principal, body: WebhookConfigBody) -> dict[str, Any]:
    secret = body.secret or new_secret()
    _check_secret(secret)
    webhook_id = body.webhook_id or f"wh_{uuid.uuid4().hex}"
    config = {"input_mapping": body.input_mapping, "description": body.description}
    row = await gw.db.fetchrow(
        f"INSERT INTO webhook_configs (webhook_id, flow_id, tenant_id, user_id, webhook_config, enabled, secret)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (webhook_id) DO NOTHING RETURNING {_COLUMNS}",
        webhook_id,
        body.flow_id,
        who.tenant_id,
        who.user_id,
        config,
        body.enabled,
        secret,
    )
    if row is None:
        raise Conflict(f"webhook {webhook_id!r} already exists")
    return public(row, secret)


async def get(gw: Gateway, who: Principal, webhook_id: str) -> dict[str, Any]:
    row = await gw.db.fetchrow(
        f"SELECT {_COLUMNS} FROM webhook_configs WHERE webhook_id = $1 AND tenant_id = $2", webhook_id, who.tenant_id
    )
    if row is None:
        raise NotFound("webhook not found")
    return public(row)


async def search(gw: Gateway, who: Principal, flow_id: str | None) -> list[dict[str, Any]]:
    rows = await gw.db.fetch(
        f"SELECT {_COLUMNS} FROM webhook_configs WHERE tenant_id = $1"
        " AND ($2::text IS NULL OR flow_id = $2) ORDER BY id LIMIT 500",
        who.tenant_id,
        flow_id,
    )
    return [public(r) for r in rows]


async def update(gw: Gateway, who: Principal, webhook_id: str, body: WebhookConfigUpdate) -> dict[str, Any]:
    secret = new_secret() if body.rotate_secret else None
    patch = {
        k: v for k, v in (("input_mapping", body.input_mapping), ("description", body.description)) if v is not None
    }
    row = await gw.db.fetchrow(
        f"""
        UPDATE webhook_configs SET flow_id = coalesce($3, flow_id), enabled = coalesce($4, enabled),
               webhook_config = coalesce(webhook_config, '{{}}'::jsonb) || $5::jsonb,
               secret = coalesce($6, secret), updated_at = now()
         WHERE webhook_id = $1 AND tenant_id = $2 RETURNING {_COLUMNS}
        """,
        webhook_id,
        who.tenant_id,
        body.flow_id,
        body.enabled,
        patch,
        secret,
    )
    if row is None:
        raise NotFound("webhook not found")
    return public(row, secret)


async def delete(gw: Gateway, who: Principal, webhook_id: str) -> None:
    result: str = await gw.db.execute(
        "DELETE FROM webhook_configs WHERE webhook_id = $1 AND tenant_id = $2", webhook_id, who.tenant_id
    )
    if result.endswith(" 0"):
        raise NotFound("webhook not found")


def run_request_id(webhook_id: str, delivery_id: str) -> str:
    """The run's idempotency key for one delivery; a digest of it when a long webhook id would overflow the column."""
    key = f"webhook:{webhook_id}:{delivery_id}"
    return key if len(key) <= _MAX_REQUEST_ID else f"webhook:{hashlib.sha256(key.encode()).hexdigest()}"


def _run_input(gw: Gateway, row: Any, call: WebhookCall, webhook_id: str) -> dict[str, Any]:
    """The run input the config's `input_mapping` builds from the call: 400 when it is too large or too deep."""
    mapping = (row["webhook_config"] or {}).get("input_mapping") or {}
    if not mapping:
        return {"payload": call.payload, "source": call.source}
    scope = {"payload": call.payload, "headers": call.headers, "source": call.source, "webhook_id": webhook_id}
    try:
        run_input: dict[str, Any] = render(mapping, scope, gw.settings.flow_max_render_bytes)
    except TemplateError as exc:
        raise BadRequest(f"input mapping: {exc}") from None
    deep = too_deep(run_input)
    if deep:
        raise BadRequest(f"input mapping: the rendered input is {deep}")
    return run_input


async def receive(
    gw: Gateway, webhook_id: str, raw: bytes, headers: dict[str, str], correlation_id: str
) -> runs.Started:
    """Verify the Standard Webhooks signature over the raw body, then start the run once per delivery id."""
    if len(headers.get("webhook-id", "")) > MAX_DELIVERY_ID:
        raise BadRequest(f"the webhook-id header may be at most {MAX_DELIVERY_ID} characters long")
    row = await gw.db.fetchrow("SELECT * FROM webhook_configs WHERE webhook_id = $1", webhook_id)
    if row is None or not row["enabled"]:
        raise NotFound("webhook not found or disabled")
    try:
        Webhook(row["secret"]).verify(raw, headers, json_parse=False)
    except (WebhookVerificationError, ValueError, UnicodeDecodeError) as exc:
        raise Unauthorized(f"webhook signature rejected: {exc}") from None
    try:
        call = WebhookCall.model_validate(orjson.loads(raw) if raw else {})
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise BadRequest(f"invalid webhook body: {str(exc).splitlines()[0]}") from None
    if call.webhook_id not in (None, webhook_id):
        raise BadRequest("body webhook_id does not match the URL")
    delivery_id = headers.get("webhook-id", "")
    run_input = _run_input(gw, row, call, webhook_id)
    who = Principal(tenant_id=row["tenant_id"], user_id=row["user_id"], kind="tool")
    started = await runs.start(
        gw,
        who,
        RunBody(
            flow_id=row["flow_id"],
            input=run_input,
            tenant_id=row["tenant_id"],
            request_id=run_request_id(webhook_id, delivery_id),
        ),
        correlation_id=correlation_id,
        trigger={"via": "webhook", "webhook_id": webhook_id, "delivery_id": delivery_id, "source": call.source},
    )
    await gw.db.execute(
        "INSERT INTO webhook_deliveries (webhook_id, delivery_id, run_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        webhook_id,
        delivery_id,
        started.run_id,
    )
    return started
