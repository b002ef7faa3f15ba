"""Claims batched per worker: jobs that start together share one Postgres transaction, which also
reads the conversation history of every request it started."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import asyncpg

from common.requests import lifecycle
from common.requests import repository as request_repo
from common.requests.models import JobPayload


@dataclass(frozen=True)
class Claimed:
    """A started attempt's request row, and its session's earlier turns (oldest first) for the model."""

    row: asyncpg.Record
    history: list[dict[str, str]]


Waiter = tuple[JobPayload, asyncio.Future[Claimed | None]]


class ClaimBatcher:
    """`claim(payload)` joins the next batch. One batch is in flight at a time: the claims asked
    for meanwhile (a burst of jobs) go out together when it returns, and an idle worker's claim
    goes out at once."""

    def __init__(
        self, db: asyncpg.Pool, lease_seconds: float, history_turns: int, holder: Callable[[], int | None]
    ) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.history_turns = history_turns
        self.holder = holder  # the presence key claims record (common/platform/presence.py)
        self.waiting: list[Waiter] = []
        self.in_flight: asyncio.Task[None] | None = None

    async def claim(self, payload: JobPayload) -> Claimed | None:
        future: asyncio.Future[Claimed | None] = asyncio.get_running_loop().create_future()
        self.waiting.append((payload, future))
        if self.in_flight is None:
            self.in_flight = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                await self._claim(batch)
        finally:
            self.in_flight = None

    async def _claim(self, batch: list[Waiter]) -> None:
        try:
            # One transaction: if reading the histories fails, the claims are undone too, and the
            # jobs retry whole instead of being left running until their lease lapses.
            async with self.db.acquire() as conn, conn.transaction():
                payloads = [p for p, _ in batch]
                rows = await lifecycle.claim_many(conn, payloads, self.lease_seconds, self.holder())
                turns = await histories(conn, rows.values(), self.history_turns)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for payload, future in batch:
            row = rows.get(payload.request_id)
            # A batch may hold a stale job of the request too (ARQ re-running an earlier attempt's job
            # beside the retry): only the attempt that was started gets the row.
            if row is not None and row["attempt"] != payload.attempt:
                row = None
            if not future.done():
                future.set_result(None if row is None else Claimed(row, turns.get(payload.request_id, [])))


async def histories(
    conn: asyncpg.Connection, claimed: Iterable[asyncpg.Record], turns: int
) -> dict[str, list[dict[str, str]]]:
    """The last `turns` completed exchanges before each request in its session, by request id."""
    rows = list(claimed)
    if not rows or turns <= 0:
        return {}
    found = await request_repo.earlier_turns(
        conn, [r["request_id"] for r in rows], [r["session_id"] for r in rows], [r["id"] for r in rows], turns
    )
    messages: dict[str, list[dict[str, str]]] = {}
    for turn in found:
        messages.setdefault(turn["for_request"], []).extend(
            [
                {"role": "user", "content": turn["request_content"]},
                {"role": "assistant", "content": turn["response_content"]},
            ]
        )
    return messages
