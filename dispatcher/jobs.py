"""The dispatcher's jobs: fan a finished request out to its channels, then one attempt per job."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from common.delivery import configs as channel_configs
from common.delivery import jobs as delivery
from common.delivery import verification
from common.delivery.jobs import DeliveryJob
from common.platform.logging import correlation_id
from common.platform.outages import STORE_ERRORS, outlast
from common.requests import repository as request_repo
from common.requests.models import JobPayload
from dispatcher import records
from dispatcher.channels import DeliveryError, Reply, email, slack, sms, webhook
from dispatcher.runtime import DispatcherRuntime

log = logging.getLogger(__name__)


async def load_reply(rt: DispatcherRuntime, request_id: str, tenant_id: str) -> tuple[Reply, str] | None:
    row = await request_repo.reply(rt.db, tenant_id, request_id)
    if row is None or row["status"] != "completed":
        return None
    return Reply(
        request_id=row["request_id"],
        session_id=row["session_id"],
        tenant_id=row["tenant_id"],
        user_id=row["user_id"],
        content=row["request_content"],
        response=row["response_content"] or "",
        agent_id=row["agent_id"],
        attempt=row["attempt"],
        completed_at=row["completed_at"] or 0.0,
    ), row["integration_type"]


async def deliver_request(ctx: dict[str, Any], raw: dict[str, Any]) -> int:
    """One delivery per channel the user's configuration wants, enqueued in priority order; then the
    request no longer awaits the dispatcher. A store outage is waited out (the job's timeout bounds
    the wait, and the sweep runs the job again after it: every step here may run twice)."""
    rt: DispatcherRuntime = ctx["rt"]
    payload = JobPayload.model_validate(raw)
    correlation_id.set(payload.correlation_id)
    loaded = await outlast("load reply", lambda: load_reply(rt, payload.request_id, payload.tenant_id))
    channels: list[channel_configs.Channel] = []
    if loaded is not None:
        reply, integration_type = loaded
        wanted = await outlast(
            "delivery settings",
            lambda: delivery.channels_for(rt.db, rt.settings, reply.tenant_id, reply.user_id, integration_type),
        )
        channels = [channel for channel, _ in wanted]
        for channel in channels:
            job = DeliveryJob(
                request_id=reply.request_id,
                session_id=reply.session_id,
                tenant_id=reply.tenant_id,
                user_id=reply.user_id,
                channel=channel,
                expires_at=reply.completed_at + rt.settings.delivery_expiry_seconds,
                correlation_id=payload.correlation_id,
            )
            await outlast("queue delivery", partial(delivery.enqueue_attempt, rt.queue, job))
    await outlast("settle delivery", lambda: records.settle_request(rt.db, payload.request_id))
    return len(channels)


async def _unverified(rt: DispatcherRuntime, job: DeliveryJob, cfg: channel_configs.ChannelConfig) -> str | None:
    """Why an EMAIL or SMS destination may not be sent to (nobody confirmed the code sent there), else None."""
    to = verification.destination(job.channel, cfg.config)
    if to is None or await verification.allowed(rt.db, job.tenant_id, job.user_id, job.channel, to):
        return None
    return (
        f"not sent: {job.channel} destination {to} is not verified; confirm the code relaygate sent there"
        f" (POST /api/v1/users/{{user_id}}/integrations/{job.channel}/verify)"
    )


async def _send(
    rt: DispatcherRuntime, job: DeliveryJob, cfg: channel_configs.ChannelConfig, reply: Reply
) -> str | None:
    if job.channel == "EMAIL":
        return await email.send(rt.settings, cfg.config, reply)
    if job.channel == "WEBHOOK":
        return await webhook.send(rt.settings.outbound_policy(), cfg.config, reply, rt.settings.webhook_timeout_seconds)
    if job.channel == "SMS":
        return await sms.send(rt.http, rt.settings, cfg.config, reply)
    if job.channel == "SLACK":
        return await slack.post_reply(rt, job, cfg.config, reply)
    return "recorded"


async def deliver(ctx: dict[str, Any], raw: dict[str, Any]) -> str:
    """One attempt: a delivery_logs row, the send, its outcome on the stream, and the next attempt if due."""
    rt: DispatcherRuntime = ctx["rt"]
    job = DeliveryJob.model_validate(raw)
    correlation_id.set(job.correlation_id)
    row = await outlast("open delivery attempt", lambda: records.open_attempt(rt.db, job))
    if row["status"] != "PENDING":
        return str(row["status"])  # this attempt already ended (the job ran again after a crash)
    delivery_id = row["delivery_id"]
    loaded = await outlast("load reply", lambda: load_reply(rt, job.request_id, job.tenant_id))
    if loaded is None:
        await outlast(
            "close delivery attempt",
            lambda: records.close_attempt(rt.db, delivery_id, "FAILED", "the request has no completed reply"),
        )
        return "FAILED"
    reply = loaded[0]
    if job.expires_at and time.time() > job.expires_at:
        await _outcome(rt, job, reply, delivery_id, "EXPIRED", "the delivery expired before it succeeded")
        return "EXPIRED"
    configs = await outlast(
        "delivery settings", lambda: channel_configs.effective_for(rt.db, rt.settings, job.tenant_id, job.user_id)
    )
    cfg = configs.get(job.channel)
    if cfg is None or not channel_configs.deliverable(job.channel, cfg):
        await _outcome(rt, job, reply, delivery_id, "FAILED", f"{job.channel} is disabled for this user")
        return "FAILED"
    unverified = await outlast("destination check", lambda: _unverified(rt, job, cfg))
    if unverified:
        await _outcome(rt, job, reply, delivery_id, "FAILED", unverified)
        log.info(
            "delivery skipped: destination not verified", extra={"request_id": job.request_id, "channel": job.channel}
        )
        return "FAILED"
    try:
        ref = await _send(rt, job, cfg, reply)
    except DeliveryError as exc:
        return await _failed(rt, job, cfg, reply, delivery_id, exc)
    except Exception as exc:  # a bug or an input no channel foresaw: a failed attempt, never a PENDING row
        log.warning(
            "delivery raised an unexpected error",
            extra={"request_id": job.request_id, "channel": job.channel, "error": type(exc).__name__},
        )
        unexpected = DeliveryError(f"{job.channel} delivery failed: unexpected {type(exc).__name__}", retryable=False)
        return await _failed(rt, job, cfg, reply, delivery_id, unexpected)
    await _outcome(rt, job, reply, delivery_id, "SUCCESS", None, ref)
    log.info("delivered", extra={"request_id": job.request_id, "channel": job.channel, "attempt": job.attempt})
    return "SUCCESS"


async def _failed(
    rt: DispatcherRuntime,
    job: DeliveryJob,
    cfg: channel_configs.ChannelConfig,
    reply: Reply,
    delivery_id: str,
    exc: DeliveryError,
) -> str:
    detail = str(exc)
    if exc.disable:
        await outlast(
            "disable delivery",
            lambda: channel_configs.disable_override(rt.db, job.tenant_id, job.user_id, job.channel, cfg),
        )
    if exc.retryable and job.attempt <= cfg.retry_count:
        delay = max(cfg.retry_delay_seconds * rt.settings.delivery_retry_delay_scale, exc.retry_after or 0)
        about = {"request_id": job.request_id, "channel": job.channel, "attempt": job.attempt}
        # The row says when the next attempt is due before it is queued: if that enqueue is lost, the sweep queues it.
        await _outcome(rt, job, reply, delivery_id, "RETRYING", detail, retry_in=delay)
        log.warning("delivery attempt failed; retrying", extra={**about, "error": detail, "retry_in": delay})
        try:
            await delivery.enqueue_attempt(rt.queue, job.model_copy(update={"attempt": job.attempt + 1}), defer=delay)
        except STORE_ERRORS as error:
            log.warning(
                "next delivery attempt not queued; the sweep will queue it", extra={**about, "error": repr(error)}
            )
        return "RETRYING"
    await _outcome(rt, job, reply, delivery_id, "FAILED", detail)
    log.warning(
        "delivery failed",
        extra={"request_id": job.request_id, "channel": job.channel, "attempt": job.attempt, "error": detail},
    )
    return "FAILED"


async def _outcome(
    rt: DispatcherRuntime,
    job: DeliveryJob,
    reply: Reply,
    delivery_id: str,
    status: channel_configs.DeliveryStatus,
    detail: str | None,
    ref: str | None = None,
    retry_in: float | None = None,
) -> None:
    await outlast(
        "close delivery attempt", lambda: records.close_attempt(rt.db, delivery_id, status, detail, ref, retry_in)
    )
    await records.announce(rt.writer, job, reply.attempt, delivery_id, status, detail)
