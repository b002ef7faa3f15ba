"""WEBHOOK: a signed POST in the Standard Webhooks format (webhook-id, -timestamp, -signature)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from standardwebhooks import Webhook

from common.delivery.configs import WEBHOOK_OWN_HEADERS
from common.platform import outbound
from dispatcher.channels import DeliveryError, Reply, retry_after

EVENT_TYPE = "request.completed"


def payload(reply: Reply) -> str:
    return orjson.dumps(
        {
            "type": EVENT_TYPE,
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {
                "request_id": reply.request_id,
                "session_id": reply.session_id,
                "user_id": reply.user_id,
                "content": reply.content,
                "response": reply.response,
                "agent_id": reply.agent_id,
            },
        }
    ).decode()


async def send(rules: outbound.Policy, config: dict[str, Any], reply: Reply, seconds: float) -> str | None:
    """Through the outbound guard (checked again here: DNS or the allow-list may have changed since the
    URL was saved). `webhook-id` is the same for every attempt, so the receiver can drop a repeat."""
    msg_id = f"msg_{reply.request_id}"
    body = payload(reply)
    now = datetime.now(UTC)
    chosen = {k: v for k, v in config.get("headers", {}).items() if k.lower() not in WEBHOOK_OWN_HEADERS}
    headers = {
        **chosen,
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(config["secret"]).sign(msg_id, now, body),
    }
    try:
        response = await outbound.request("POST", config["url"], rules, headers=headers, content=body, seconds=seconds)
    except outbound.Refused as exc:
        raise DeliveryError(f"webhook {exc}", retryable=False) from None
    except outbound.Unreachable:
        raise DeliveryError("webhook unreachable") from None
    if 200 <= response.status < 300:
        return msg_id
    status = response.status
    if status == 410:
        raise DeliveryError("webhook endpoint gone (410); disabled", retryable=False, disable=True)
    if status == 429 or status >= 500:
        raise DeliveryError(f"webhook answered {status}", retry_after=retry_after(response.headers.get("retry-after")))
    raise DeliveryError(f"webhook answered {status}", retryable=False)
