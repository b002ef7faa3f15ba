"""Ending requests outside their worker, from the gateway: cancel flags, terminal events, the next job."""

from __future__ import annotations

import logging

import asyncpg

from api.deps import Gateway
from common import lifecycle, queue
from common.keys import cancel_key
from common.models import JobPayload
from common.streams import ended

log = logging.getLogger(__name__)


async def cancel_queued(gw: Gateway, conn: asyncpg.Connection, session_id: str, request_ids: list[str],
                        reason: str) -> tuple[str, JobPayload] | None:
    """Cancel the requests that have not started and end their streams, inside the caller's transaction.

    The terminal events are written before the transaction commits: if Redis fails, the
    cancellation rolls back with it, so no request is ever cancelled without a `done`.
    """
    cancelled, upcoming = await lifecycle.cancel_queued(conn, session_id, request_ids, reason)
    events = [e for row in cancelled for e in ended(row["request_id"], row["attempt"], "cancelled",
                                                     {"reason": reason})]
    if events:
        await gw.writer.append(session_id, events)
    return upcoming


async def flag_running(gw: Gateway, session_id: str, request_ids: list[str], reason: str) -> None:
    """Ask the workers running these requests to stop; they write the terminal events."""
    for request_id in request_ids:
        await gw.streams.set(cancel_key(session_id, request_id, gw.settings.stream_buckets), reason,
                             ex=gw.settings.request_timeout_seconds)


async def cancel_many(gw: Gateway, session_id: str, request_ids: list[str], reason: str) -> None:
    await flag_running(gw, session_id, request_ids, reason)
    async with gw.db.acquire() as conn, conn.transaction():
        await lifecycle.lock_session(conn, session_id)
        upcoming = await cancel_queued(gw, conn, session_id, request_ids, reason)
    await enqueue_safely(gw, upcoming)


async def enqueue_safely(gw: Gateway, upcoming: tuple[str, JobPayload] | None) -> None:
    """The request is durable in Postgres; if the queue is down, workers' sweep queues it later."""
    if upcoming is None:
        return
    feature, payload = upcoming
    try:
        await queue.enqueue(gw.queue, feature, payload)
    except Exception as exc:
        log.warning("enqueue failed; the stalled-request sweep will retry",
                    extra={"request_id": payload.request_id, "error": repr(exc)})
