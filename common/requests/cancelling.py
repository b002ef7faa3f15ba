"""Cancelling requests from outside their worker (the gateway, the intake's `interrupt`): cancel flags for the
running ones, the queued ones ended at once (`lifecycle.cancel_queued`, in the caller's transaction), then
the session's next job."""

from __future__ import annotations

import logging

import asyncpg

from common.platform.keys import cancel_key
from common.queue import enqueue as queue
from common.requests import ending, lifecycle
from common.requests.models import JobPayload
from common.requests.stores import Stores

log = logging.getLogger(__name__)


async def end_streams(stores: Stores, rows: list[asyncpg.Record]) -> None:
    """Write the closing events of requests cancelled before they started; on a store error the workers'
    ending sweep writes them within seconds, so the caller is not failed for it."""
    try:
        await ending.end_elsewhere(stores, rows, queue_next=False)
    except Exception as exc:
        log.warning("ending streams failed; the ending sweep will retry", extra={"error": repr(exc)})


async def flag_running(stores: Stores, session_id: str, request_ids: list[str], reason: str) -> None:
    """Ask the workers running these requests to stop; they write the terminal events."""
    if not request_ids:
        return
    pipe = stores.streams.pipeline(transaction=False)
    for request_id in request_ids:
        pipe.set(
            cancel_key(session_id, request_id, stores.settings.stream_buckets),
            reason,
            ex=stores.settings.request_timeout_seconds,
        )
    await pipe.execute()


async def cancel_many(stores: Stores, session_id: str, request_ids: list[str], reason: str) -> None:
    await flag_running(stores, session_id, request_ids, reason)
    async with stores.db.acquire() as conn, conn.transaction():
        await lifecycle.lock_session(conn, session_id)
        cancelled, upcoming = await lifecycle.cancel_queued(conn, session_id, request_ids, reason)
    await end_streams(stores, cancelled)
    await enqueue_safely(stores, upcoming)


async def enqueue_safely(stores: Stores, upcoming: tuple[str, JobPayload] | None) -> None:
    """The request is durable in Postgres; if the queue is down, workers' sweep queues it later."""
    if upcoming is None:
        return
    feature, payload = upcoming
    try:
        await queue.enqueue(stores.queue, feature, payload)
    except Exception as exc:
        log.warning(
            "enqueue failed; the stalled-request sweep will retry",
            extra={"request_id": payload.request_id, "error": repr(exc)},
        )
