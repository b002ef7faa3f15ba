"""Delivery jobs on the dispatcher's queue: what workers and the gateway enqueue, what the dispatcher runs."""

from __future__ import annotations

import logging
import uuid

import asyncpg
from arq.connections import ArqRedis
from pydantic import BaseModel

from common.delivery import configs as channel_configs
from common.delivery.configs import Channel
from common.platform.keys import dispatcher_queue
from common.platform.settings import Settings
from common.queue import enqueue as queue
from common.requests.lifecycle import Finished
from common.requests.models import JobPayload

log = logging.getLogger(__name__)

DELIVER_REQUEST = "deliver_request"
DELIVER = "deliver"
FOLLOW_SLACK = "follow_slack"
SLACK_NOTICE = "slack_notice"


class DeliveryJob(BaseModel):
    """One attempt of delivering one request's outcome to one channel."""

    request_id: str
    session_id: str
    tenant_id: str
    user_id: str
    channel: Channel
    attempt: int = 1
    expires_at: float = 0.0
    correlation_id: str = ""

    @property
    def key(self) -> str:
        return f"{self.request_id}:{self.channel}"


class SlackTarget(BaseModel):
    """Where a Slack request's reply goes: its thread in its workspace."""

    team_id: str
    channel_id: str
    thread_ts: str | None = None
    slack_user_id: str = ""
    message_ts: str | None = None  # the asking message: its thread takes the reply when `thread_replies` is on


class SlackFollow(BaseModel):
    """Follow a Slack request's stream from `after` and show its reply in the thread as it is written."""

    request_id: str
    session_id: str
    tenant_id: str
    user_id: str
    after: str
    target: SlackTarget
    correlation_id: str = ""
    part: int = 0  # continuations of a reply that outlasts one job


class SlackNotice(BaseModel):
    """An ephemeral message to one Slack user in a channel, posted by their tenant's installation."""

    team_id: str
    tenant_id: str
    channel_id: str
    slack_user_id: str
    text: str


async def _enqueue(pool: ArqRedis, function: str, job_id: str, arg: BaseModel, *, defer: float = 0) -> bool:
    return await queue.push(pool, dispatcher_queue(), function, job_id, (arg.model_dump(),), defer_seconds=defer)


async def enqueue_request(pool: ArqRedis, payload: JobPayload) -> bool:
    """Ask the dispatcher to deliver a finished request wherever its user's configuration says."""
    return await _enqueue(pool, DELIVER_REQUEST, f"dlv:{payload.request_id}", payload)


async def enqueue_attempt(pool: ArqRedis, job: DeliveryJob, *, defer: float = 0) -> bool:
    return await _enqueue(pool, DELIVER, f"dlv:{job.key}:{job.attempt}", job, defer=defer)


async def enqueue_slack(pool: ArqRedis, follow: SlackFollow) -> bool:
    suffix = f":{follow.part}" if follow.part else ""
    return await _enqueue(pool, FOLLOW_SLACK, f"dlv:{follow.request_id}:SLACK{suffix}", follow)


async def enqueue_slack_notice(pool: ArqRedis, notice: SlackNotice) -> bool:
    return await _enqueue(pool, SLACK_NOTICE, f"slack-notice:{uuid.uuid4()}", notice)


async def channels_for(
    db: asyncpg.Pool, settings: Settings, tenant_id: str, user_id: str, integration_type: str
) -> list[tuple[Channel, channel_configs.ChannelConfig]]:
    """The channels a finished reply goes to after it ends, in priority order.

    A Slack request's own thread is followed live from its start (FOLLOW_SLACK), so SLACK
    here means only another channel named in the user's config.
    """
    configs = await channel_configs.effective_for(db, settings, tenant_id, user_id)
    out: list[tuple[Channel, channel_configs.ChannelConfig]] = []
    for channel, cfg in configs.items():
        if not channel_configs.deliverable(channel, cfg):
            continue
        if channel == "SLACK" and (integration_type == "slack" or not cfg.config.get("channel_id")):
            continue
        out.append((channel, cfg))
    return out


async def after_request(pool: ArqRedis, payload: JobPayload, ended: Finished) -> None:
    """Called once a request's ending is committed: queue its delivery when the ending marked it pending.

    Never raises: the reply is stored and streamed already, and the mark outlives a lost enqueue (the
    dispatcher's sweep, dispatcher/repair.py, queues it a few seconds later).
    """
    if not ended.delivery_pending:
        return
    try:
        await enqueue_request(pool, payload)
    except Exception as exc:  # Redis down, mostly
        log.warning(
            "delivery not queued; the dispatcher's sweep will queue it",
            extra={"request_id": payload.request_id, "error": repr(exc)},
        )
