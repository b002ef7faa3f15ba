"""Ending requests outside their worker, from the gateway: cancel flags, terminal events, the next job."""

from __future__ import annotations

import logging

import asyncpg

from api.deps import Gateway
from common.platform.keys import cancel_key
from common.queue import enqueue as queue
from common.requests import ending, lifecycle
from common.requests.models import JobPayload

log = logging.getLogger(__name__)


async def cancel_queued(
    conn: asyncpg.Connection, session_id: str, request_ids: list[str], reason: str
) -> tuple[tuple[str, JobPayload] | None, list[asyncpg.Record]]:
    """Cancel the requests that have not started, inside the caller's transaction.

    Returns the session's next job and the cancelled rows, whose streams the caller ends with
    `end_streams` once the transaction has committed (the ending sweep does it if that fails).
    """
    cancelled, upcoming = await lifecycle.cancel_queued(conn, session_id, request_ids, reason)
    return upcoming, cancelled


async def end_streams(gw: Gateway, rows: list[asyncpg.Record]) -> None:
    """Write the closing events of requests this gateway ended; on a store error the workers' ending
    sweep writes them within seconds, so the caller is not failed for it."""
    if not rows:
        return
    try:
        await ending.close(gw.writer, gw.db, rows)
    except Exception as exc:  # Postgres failed to clear the flags: the sweep rewrites nothing twice
        log.warning("ending streams failed; the ending sweep will retry", extra={"error": repr(exc)})


async def flag_running(gw: Gateway, session_id: str, request_ids: list[str], reason: str) -> None:
    """Ask the workers running these requests to stop; they write the terminal events."""
    for request_id in request_ids:
        await gw.streams.set(
            cancel_key(session_id, request_id, gw.settings.stream_buckets),
            reason,
            ex=gw.settings.request_timeout_seconds,
        )


async def cancel_many(gw: Gateway, session_id: str, request_ids: list[str], reason: str) -> None:
    await flag_running(gw, session_id, request_ids, reason)
    async with gw.db.acquire() as conn, conn.transaction():
        await lifecycle.lock_session(conn, session_id)
        upcoming, cancelled = await cancel_queued(conn, session_id, request_ids, reason)
    await end_streams(gw, cancelled)
    await enqueue_safely(gw, upcoming)


async def enqueue_safely(gw: Gateway, upcoming: tuple[str, JobPayload] | None) -> None:
    """The request is durable in Postgres; if the queue is down, workers' sweep queues it later."""
    if upcoming is None:
        return
    feature, payload = upcoming
    try:
        await queue.enqueue(gw.queue, feature, payload)
    except Exception as exc:
        log.warning(
            "enqueue failed; the stalled-request sweep will retry",
            extra={"request_id": payload.request_id, "error": repr(exc)},
        )
