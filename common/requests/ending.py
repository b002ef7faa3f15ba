"""How a request ends on its stream, whoever ends it: the closing events, written once, after the row.

Postgres is the outcome: a request's row becomes terminal first (with `done_pending`), then its
closing events go to the stream in one fenced append (common.streams.writer.StreamWriter.end), then the
flag is cleared. A writer that dies in between leaves the flag set, and the workers' sweep writes
the same events from the row. The stream fence makes the ending happen at most once, so between
them it happens exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from common.platform.keys import cancel_key
from common.queue import enqueue as queue
from common.requests import lifecycle
from common.requests.stores import Stores
from common.streams.protocol import Event
from common.streams.writer import StreamWriter
from common.usage.models import Usage, of_row

log = logging.getLogger(__name__)

# A terminal row's own writer normally clears its flag within milliseconds; the sweep waits this long.
SWEEP_GRACE_SECONDS = 2.0

NOT_STORED = "the request was not stored"


def closing_events(
    request_id: str,
    attempt: int,
    status: str,
    *,
    reply: str | None = None,
    error: str | None = None,
    agent_id: str | None = None,
    processing_time_ms: int | None = None,
    output_chunks: int | None = None,
    usage: Usage | None = None,
    seq: int = 0,
) -> list[Event]:
    """`message` and `run.completed` (with the request's `usage`), or `run.failed` / `run.cancelled`;
    then `done`.

    `seq` numbers the events from that value on (0 leaves them unnumbered, for enders that are not
    the attempt itself). `output_chunks` (the text chunks the model streamed) is known only to the attempt.
    """
    body: list[tuple[str, dict[str, Any]]]
    if status == "completed":
        completed: dict[str, Any] = {"processing_time_ms": processing_time_ms, "usage": (usage or Usage()).as_data()}
        if output_chunks is not None:
            completed["output_chunks"] = output_chunks
        body = [("message", {"content": reply or "", "agent_id": agent_id}), ("run.completed", completed)]
    elif status == "cancelled":
        body = [("run.cancelled", {"reason": error})]
    else:
        body = [("run.failed", {"error": error})]
    body.append(("done", {"request_id": request_id, "status": status}))
    return [
        Event(
            type=kind,  # type: ignore[arg-type]
            request_id=request_id,
            attempt=attempt,
            seq=seq + n if seq else 0,
            data=data,
        )
        for n, (kind, data) in enumerate(body)
    ]


def closing_for_row(row: Mapping[str, Any]) -> list[Event]:
    """The closing events of a terminal row (its lifecycle.ENDED columns)."""
    return closing_events(
        row["request_id"],
        row["attempt"],
        row["status"],
        reply=row["response_content"],
        error=row["error"],
        agent_id=row["agent_id"],
        processing_time_ms=row["processing_time_ms"],
        usage=of_row(row),
    )


async def close(writer: StreamWriter, db: asyncpg.Pool, rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Write the closing events of terminal rows, then clear their `done_pending`; returns the rows
    closed. A row whose write fails is logged and left flagged for the ending sweep; the rest go on."""
    closed = []
    for row in rows:
        try:
            await writer.end(row["session_id"], closing_for_row(row))
            closed.append(row)
        except Exception as exc:
            log.warning(
                "writing a request's ending failed; the ending sweep retries it",
                extra={"request_id": row["request_id"], "error": repr(exc)},
            )
    if closed:
        await lifecycle.mark_ended(db, [row["request_id"] for row in closed])
    return closed


class EndedMarks:
    """Clears `done_pending` for the requests a worker ended, many per statement.

    `add` never waits: one batch is in flight at a time and the marks added meanwhile go out together
    when it returns (an idle worker's mark goes out at once). A batch lost to a store error or a dying
    worker leaves its flags for the ending sweep, whose rewrite the stream fence refuses: nothing ends twice.
    """

    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db
        self.waiting: list[str] = []
        self.in_flight: asyncio.Task[None] | None = None

    def add(self, request_id: str) -> None:
        self.waiting.append(request_id)
        if self.in_flight is None:
            self.in_flight = asyncio.create_task(self._run(), name="ended marks")

    async def _run(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                try:
                    await lifecycle.mark_ended(self.db, batch)
                except Exception as exc:
                    log.warning("clearing ended flags failed; the ending sweep clears them", extra={"error": repr(exc)})
        finally:
            self.in_flight = None

    async def close(self) -> None:
        """Wait for the marks already added (a stopping worker)."""
        while self.in_flight is not None:
            await asyncio.shield(self.in_flight)


async def end_elsewhere(stores: Stores, rows: list[asyncpg.Record], *, queue_next: bool = True) -> None:
    """End requests that something other than their worker made terminal (a cancel, the reaper, a deadline):
    flag their workers to stop, write the closing events, then queue each session's next request
    (`queue_next`; False for a caller that took it in the transaction that ended them).

    The rows are already terminal with `done_pending` set, so a failure here is retried by the workers'
    ending sweep, not lost.
    """
    if not rows:
        return
    pipe = stores.streams.pipeline(transaction=False)
    for row in rows:
        pipe.set(
            cancel_key(row["session_id"], row["request_id"], stores.settings.stream_buckets),
            row["error"] or row["status"],
            ex=stores.settings.request_timeout_seconds,
        )
    await pipe.execute()
    closed = await close(stores.writer, stores.db, rows)
    if not queue_next:
        return
    for session_id in {row["session_id"] for row in closed}:
        upcoming = await lifecycle.advance(stores.db, session_id)
        if upcoming:
            await queue.enqueue(stores.queue, *upcoming)


async def end_unstored(writer: StreamWriter, session_id: str, request_id: str) -> None:
    """End on its stream a request that was announced but whose row was never stored."""
    await writer.end(session_id, closing_events(request_id, 1, "failed", error=NOT_STORED))
