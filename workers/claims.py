"""Claims batched per worker: jobs that start together share one Postgres transaction."""

from __future__ import annotations

import asyncio

import asyncpg

from common import lifecycle
from common.models import JobPayload

Waiter = tuple[JobPayload, asyncio.Future[asyncpg.Record | None]]


class ClaimBatcher:
    """`claim(payload)` joins the next batch. One batch is in flight at a time: the claims asked
    for meanwhile (a burst of jobs) go out together in one `lifecycle.claim_many` when it returns,
    and an idle worker's claim goes out at once."""

    def __init__(self, db: asyncpg.Pool, lease_seconds: float) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.waiting: list[Waiter] = []
        self.in_flight: asyncio.Task[None] | None = None

    async def claim(self, payload: JobPayload) -> asyncpg.Record | None:
        future: asyncio.Future[asyncpg.Record | None] = asyncio.get_running_loop().create_future()
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
            rows = await lifecycle.claim_many(self.db, [p for p, _ in batch], self.lease_seconds)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for payload, future in batch:
            if not future.done():
                future.set_result(rows.get(payload.request_id))
