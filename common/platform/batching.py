"""Concurrent calls of one statement run as one: under a burst, a round trip carries many callers' rows.

A call that finds nothing running goes at once (alone, no added wait); calls that arrive while a batch
is in flight wait for it and then go together. When a Postgres batch fails, each of its calls runs
alone (the statement wrote nothing), so an error reaches only the caller whose row caused it. Redis
commands (`pipelined`) go as one pipeline, and each caller gets its own command's reply or error.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from common.platform import metrics

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """`await batcher(item)` → `one(item)`'s result, made through `many(items)` when calls overlap.

    `many` returns one result per item, in order; an exception in its place is raised to that caller.
    `key(item)`: items with equal keys never share a batch (a statement that would touch one row twice);
    `limit` caps a batch's size; `name` labels the batch metrics. `alone_after_failure`: when `many`
    raises, run each item by itself (only for a `many` that is all or nothing, like one SQL statement);
    else every caller gets the error.
    """

    def __init__(
        self,
        many: Callable[[list[T]], Awaitable[Sequence[R]]],
        one: Callable[[T], Awaitable[R]],
        *,
        name: str,
        key: Callable[[T], Hashable] | None = None,
        limit: int = 128,
        alone_after_failure: bool = True,
    ) -> None:
        self._many = many
        self._one = one
        self._key = key
        self._limit = limit
        self._alone_after_failure = alone_after_failure
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._running: asyncio.Task[None] | None = None
        self.batches = 0  # statements made for more than one call
        self._counted = (metrics.BATCHES.labels(name), metrics.BATCHED_CALLS.labels(name))

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
        except Exception as exc:
            if self._alone_after_failure:
                return False
            results = [exc] * len(calls)  # type: ignore[list-item]
        else:
            self.batches += 1
            self._counted[0].inc()
            self._counted[1].inc(len(calls))
        for (_, future), result in zip(calls, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        return True


Command = tuple[tuple[Any, ...], AsyncScript | None]


class Pipelined:
    """One Redis client's concurrent commands sent as one pipeline (not a transaction). A cluster client's
    commands go one by one: a pipeline there is split by slot anyway."""

    def __init__(self, redis: Redis | RedisCluster) -> None:
        self.redis = redis
        self.batcher: Batcher[Command, Any] = Batcher(
            self._many, self._one, name="redis pipeline", alone_after_failure=False
        )
        self.send = self._one if isinstance(redis, RedisCluster) else self.batcher

    async def command(self, *args: Any) -> Any:
        """`execute_command(*args)`, with the client's reply parsing."""
        return await self.send((args, None))

    async def script(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        """`script(keys=keys, args=args)`: EVALSHA in the pipeline, loaded first where the server lacks it."""
        return await self.send((("EVALSHA", script.sha, len(keys), *keys, *args), script))

    async def _one(self, call: Command) -> Any:
        args, script = call
        if script is not None:
            return await script(keys=list(args[3 : 3 + args[2]]), args=list(args[3 + args[2] :]))
        return await self.redis.execute_command(*args)

    async def _many(self, calls: list[Command]) -> list[Any]:
        assert isinstance(self.redis, Redis)
        pipe: Pipeline = self.redis.pipeline(transaction=False)
        for args, _ in calls:
            pipe.execute_command(*args)
        replies = await pipe.execute(raise_on_error=False)
        # A script the server does not have (restarted, flushed) did not run: run it again, loading it.
        return [
            await self._one(call) if isinstance(reply, NoScriptError) else reply
            for call, reply in zip(calls, replies, strict=True)
        ]


_PIPELINED: weakref.WeakKeyDictionary[Redis | RedisCluster, Pipelined] = weakref.WeakKeyDictionary()


def pipelined(redis: Redis | RedisCluster) -> Pipelined:
    """The client's `Pipelined` (one per client)."""
    found = _PIPELINED.get(redis)
    if found is None:
        found = _PIPELINED[redis] = Pipelined(redis)
    return found
