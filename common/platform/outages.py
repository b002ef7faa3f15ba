"""Riding out store outages: the one list of errors that mean "Postgres or Redis is down for now",
a retry with backoff for the steps a process cannot go on without (tenacity), and the loop of a
periodic step (a reaper, a sweep) that a failed round never stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from redis.exceptions import RedisClusterException, RedisError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# A connection refused, reset or timed out (OSError covers TimeoutError), a Postgres connection lost,
# refused while starting, or shut down by an operator. InternalClientError: a pooled connection handed out
# while the server's shutdown notice was still being read on it ("cannot switch to state 12; another
# operation (2) is in progress"; chaos's Postgres restart met it).
POSTGRES_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InternalClientError,
)
# Redis down, loading or read-only, or a Cluster with a slot no node covers (not a RedisError).
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
# Everything that means "a store is down for now": the one list every retry and 503 uses.
STORE_ERRORS: tuple[type[Exception], ...] = (*POSTGRES_ERRORS, *REDIS_ERRORS)


def _log_wait(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        level = logging.WARNING if state.attempt_number == 1 else logging.DEBUG
        log.log(
            level,
            "store unavailable; waiting",
            extra={"step": what, "error": repr(error), "retry_in_s": round(wait, 2), "attempt": state.attempt_number},
        )

    return before_sleep


async def outlast(what: str, call: Callable[[], Awaitable[T]], *, max_wait: float = 5.0) -> T:
    """Run `call` until it succeeds, waiting with jittered exponential backoff (at most `max_wait`
    seconds) after each store error; other errors propagate at once."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(STORE_ERRORS),
        wait=wait_exponential_jitter(multiplier=0.1, max=max_wait),
        before_sleep=_log_wait(what),
        reraise=True,
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable: AsyncRetrying without a stop retries until success")


async def every(seconds: float, step: Callable[[R], Awaitable[object]], runtime: R) -> None:
    """Run `step(runtime)` every `seconds`, forever; a failed round is logged and the next one tries again."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await step(runtime)
        except (*STORE_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("maintenance step failed", extra={"step": getattr(step, "__name__", ""), "error": repr(exc)})
        except Exception:
            log.exception("maintenance step crashed", extra={"step": getattr(step, "__name__", "")})
