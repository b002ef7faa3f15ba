"""Concurrent calls of one statement run as one: under a burst, a round trip carries many callers' rows.

A call that finds nothing running goes at once (alone, no added wait); calls that arrive while a batch
is in flight wait for it and then go together. When a batch fails, each of its calls runs alone, so an
error reaches only the caller whose row caused it and no caller's work is lost to another's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """`await batcher(item)` → `one(item)`'s result, made through `many(items)` when calls overlap.

    `many` returns one result per item, in order. `key(item)`: items with equal keys never share a
    batch (a statement that would touch one row twice); `limit` caps a batch's size.
    """

    def __init__(
        self,
        many: Callable[[list[T]], Awaitable[Sequence[R]]],
        one: Callable[[T], Awaitable[R]],
        *,
        key: Callable[[T], Hashable] | None = None,
        limit: int = 128,
    ) -> None:
        self._many = many
        self._one = one
        self._key = key
        self._limit = limit
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._running: asyncio.Task[None] | None = None
        self.batches = 0  # statements made for more than one call, for tests and metrics

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._running is None:
            self._running = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                await self._run(self._take())
        finally:
            self._running = None
            for _, future in self._waiting:
                future.cancel()
            self._waiting = []

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        """The next batch: calls still waiting (a cancelled caller's row is not written), distinct keys."""
        taken: list[tuple[T, asyncio.Future[R]]] = []
        left: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        for item, future in self._waiting:
            if future.done():
                continue
            k = self._key(item) if self._key else None
            if len(taken) >= self._limit or (k is not None and k in keys):
                left.append((item, future))
                continue
            keys.add(k)
            taken.append((item, future))
        self._waiting = left
        return taken

    async def _run(self, calls: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            if len(calls) > 1 and await self._together(calls):
                return
            # Alone, or after a failed batch: each call its own statement, at once, as without batching.
            outcomes = await asyncio.gather(*(self._one(item) for item, _ in calls), return_exceptions=True)
            for (_, future), outcome in zip(calls, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, asyncio.CancelledError):
                    future.cancel()
                elif isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        finally:
            for _, future in calls:
                future.cancel()  # only a future left unanswered (the drain itself was cancelled)

    async def _together(self, calls: list[tuple[T, asyncio.Future[R]]]) -> bool:
        try:
            results = await self._many([item for item, _ in calls])
            if len(results) != len(calls):
                raise ValueError(f"{len(results)} results for {len(calls)} calls")
        except Exception:
            return False
        self.batches += 1
        for (_, future), result in zip(calls, results, strict=True):
            if not future.done():
                future.set_result(result)
        return True
