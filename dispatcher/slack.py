"""SLACK delivery: the reply posted in its thread and edited as it is written (filled in below)."""

from __future__ import annotations

from typing import Any

from common.delivery import DeliveryJob
from dispatcher.channels import DeliveryError, Reply
from dispatcher.runtime import Runtime


async def close_clients(rt: Runtime) -> None:
    rt.slack_clients.clear()


async def post_reply(rt: Runtime, job: DeliveryJob, config: dict[str, Any], reply: Reply) -> str | None:
    raise DeliveryError("Slack delivery is not available yet", retryable=False)


async def follow(ctx: dict[str, Any], raw: dict[str, Any]) -> str:
    return "skipped"
