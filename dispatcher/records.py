"""delivery_logs rows (one per attempt) and the matching `delivery.*` events on the session stream."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from common.delivery.configs import DeliveryStatus
from common.delivery.jobs import DeliveryJob
from common.platform import sink
from common.platform.metrics import DELIVERIES
from common.platform.outages import outlast
from common.streams.protocol import Event, EventType
from common.streams.writer import StreamWriter


async def open_attempt(db: asyncpg.Pool, job: DeliveryJob, *, follows: bool = False) -> asyncpg.Record:
    """The attempt's row, created PENDING, or the existing one when this attempt already ran (a redelivery).
    The previous attempt is no longer due (its `retry_at` is cleared). `follows`: a Slack thread's follow
    job opens it (dispatcher/repair.py leaves such rows to that job)."""
    row = await db.fetchrow(
        """
        WITH due AS (
          UPDATE delivery_logs SET retry_at = NULL WHERE delivery_key = $2 AND attempt = $3 - 1 AND retry_at IS NOT NULL
        )
        INSERT INTO delivery_logs (delivery_id, delivery_key, attempt, tenant_id, user_id, request_id, session_id,
                                   integration_type, follows)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (delivery_key, attempt) DO UPDATE SET updated_at = now(), follows = delivery_logs.follows OR $9
        RETURNING delivery_id::text, status, external_ref
        """,
        uuid.uuid4(),
        job.key,
        job.attempt,
        job.tenant_id,
        job.user_id,
        job.request_id,
        job.session_id,
        job.channel,
        follows,
    )
    assert row is not None
    return row


async def close_attempt(
    db: asyncpg.Pool,
    delivery_id: str,
    status: DeliveryStatus,
    error: str | None = None,
    external_ref: str | None = None,
    retry_in: float | None = None,
) -> None:
    """End the attempt's row; a RETRYING one notes when the next attempt is due (`retry_in` seconds)."""
    await db.execute(
        "UPDATE delivery_logs SET status = $2, error_message = $3, external_ref = coalesce($4, external_ref),"
        " retry_at = now() + make_interval(secs => $5), updated_at = now() WHERE delivery_id = $1",
        delivery_id,
        status,
        error,
        external_ref,
        retry_in,
    )


async def settle_request(db: asyncpg.Pool, request_id: str) -> None:
    """The request's deliveries are queued: its row no longer awaits the dispatcher."""
    await db.execute(
        "UPDATE request_logs SET delivery_pending = false WHERE request_id = $1 AND delivery_pending", request_id
    )


async def set_ref(db: asyncpg.Pool, delivery_id: str, external_ref: str) -> None:
    await db.execute(
        "UPDATE delivery_logs SET external_ref = $2, updated_at = now() WHERE delivery_id = $1",
        delivery_id,
        external_ref,
    )


async def previous_ref(db: asyncpg.Pool, key: str) -> str | None:
    """What an earlier attempt of this delivery already created (a Slack message ts), if anything."""
    ref: str | None = await db.fetchval(
        "SELECT external_ref FROM delivery_logs WHERE delivery_key = $1 AND external_ref IS NOT NULL"
        " ORDER BY attempt DESC LIMIT 1",
        key,
    )
    return ref


async def announce(
    writer: StreamWriter,
    job: DeliveryJob,
    request_attempt: int,
    delivery_id: str,
    status: DeliveryStatus,
    detail: str | None,
) -> None:
    """`delivery.succeeded` or `delivery.failed` (with the attempt's status) on the session stream."""
    data: dict[str, Any] = {
        "delivery_id": delivery_id,
        "channel": job.channel,
        "attempt": job.attempt,
        "status": status,
    }
    if detail:
        data["detail"] = detail
    kind: EventType = "delivery.succeeded" if status == "SUCCESS" else "delivery.failed"
    DELIVERIES.labels(job.channel, status).inc()
    sink.emit(
        kind,
        delivery_id,
        {"request_id": job.request_id, "session_id": job.session_id, "channel": job.channel, "status": status},
        tenant_id=job.tenant_id,
    )
    event = Event(type=kind, request_id=job.request_id, attempt=request_attempt, data=data)
    await outlast("delivery event", lambda: writer.append(job.session_id, [event]))
