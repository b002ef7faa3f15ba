"""`process_request`: one attempt of one request, from claim to terminal event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from arq import Retry
from arq.connections import ArqRedis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from common import lifecycle, metrics, queue, tracing
from common.agents import AgentRegistry
from common.keys import cancel_key
from common.logging import correlation_id
from common.models import JobPayload
from common.settings import Settings
from common.streams import Event, StreamsRedis, StreamWriter
from workers import model

log = logging.getLogger(__name__)

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
CANCEL_POLL_SECONDS = 0.25

RUNS = Counter("relaygate_worker_runs_total", "Finished request attempts", ["status"])
TOKENS = Counter("relaygate_worker_token_events_total", "Token events written")
_DB_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.InterfaceError)

ACTIVE = Gauge("relaygate_worker_active_runs", "Attempts running in this worker")


class Stop(Exception):
    """The attempt must end early: cancelled, or its lease was taken over."""

    def __init__(self, reason: str, *, fenced: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fenced = fenced


@dataclass
class Runtime:
    """What every job of this worker process shares."""

    settings: Settings
    db: asyncpg.Pool
    streams: StreamsRedis
    queue: ArqRedis
    writer: StreamWriter
    agents: AgentRegistry
    active: dict[str, Attempt] = field(default_factory=dict)


@dataclass(eq=False)
class Attempt:
    """The running state of one attempt, read by the lease heartbeat."""

    payload: JobPayload
    parts: list[str] = field(default_factory=list)
    last_stream_id: str | None = None
    seq: int = 0
    lost: bool = False

    def event(self, type_: str, data: dict[str, Any]) -> Event:
        self.seq += 1
        return Event(type=type_, request_id=self.payload.request_id, attempt=self.payload.attempt,  # type: ignore[arg-type]
                     seq=self.seq, data=data)


class TokenBuffer:
    """Coalesces model chunks into `token` events: flushed every few ms or every N tokens."""

    def __init__(self, rt: Runtime, run: Attempt) -> None:
        self.rt = rt
        self.run = run
        self.pending: list[str] = []
        self.last_flush = time.monotonic()
        self.lock = asyncio.Lock()
        self.cancel_reason: str | None = None
        self.key = rt.writer.key(run.payload.session_id)
        self.cancel = cancel_key(run.payload.session_id, run.payload.request_id, rt.settings.stream_buckets)

    async def add(self, text: str) -> None:
        self.pending.append(text)
        self.run.parts.append(text)
        if (self.run.last_stream_id is None  # the first token goes out at once
                or len(self.pending) >= self.rt.settings.token_flush_tokens
                or (time.monotonic() - self.last_flush) * 1000 >= self.rt.settings.token_flush_ms):
            await self.flush()

    async def flush(self) -> None:
        async with self.lock:
            if not self.pending:
                return
            text = "".join(self.pending)
            self.pending.clear()
            self.last_flush = time.monotonic()
            settings = self.rt.settings
            pipe = self.rt.streams.pipeline(transaction=False)
            pipe.xadd(self.key, self.run.event("token", {"text": text}).fields(),  # type: ignore[arg-type]
                      maxlen=settings.stream_maxlen, approximate=True)
            pipe.expire(self.key, settings.stream_ttl_seconds)
            pipe.get(self.cancel)
            entry_id, _, flag = await pipe.execute()
            self.run.last_stream_id = entry_id.decode()
            TOKENS.inc()
            if flag is not None:
                self.cancel_reason = flag.decode() or "cancelled"
        if self.run.lost:
            raise Stop("lease lost", fenced=True)
        if self.cancel_reason:
            raise Stop(self.cancel_reason)

    def stop_reason(self) -> Stop | None:
        if self.run.lost:
            return Stop("lease lost", fenced=True)
        return Stop(self.cancel_reason) if self.cancel_reason else None

    async def watch(self, work: asyncio.Task[None]) -> None:
        """Flush tokens a slow model left waiting, and stop `work` on a cancel flag or a lost
        lease even while the model sends nothing."""
        interval = self.rt.settings.token_flush_ms / 1000
        next_check = time.monotonic()
        while not work.done():
            await asyncio.sleep(interval)
            if self.pending and (time.monotonic() - self.last_flush) >= interval:
                with contextlib.suppress(Stop, RedisError):
                    await self.flush()
            elif time.monotonic() >= next_check:
                next_check = time.monotonic() + CANCEL_POLL_SECONDS
                with contextlib.suppress(RedisError):
                    flag = await self.rt.streams.get(self.cancel)
                    if flag is not None:
                        self.cancel_reason = flag.decode() or "cancelled"
            if self.stop_reason():
                work.cancel()
                return


async def _history(conn: asyncpg.Pool, session_id: str, before_id: int, turns: int) -> list[dict[str, str]]:
    rows = await conn.fetch(
        """
        SELECT request_content, response_content FROM request_logs
         WHERE session_id = $1 AND id < $2 AND status = 'completed' AND response_content IS NOT NULL
         ORDER BY id DESC LIMIT $3
        """,
        session_id, before_id, turns,
    )
    messages: list[dict[str, str]] = []
    for row in reversed(rows):
        messages.append({"role": "user", "content": row["request_content"]})
        messages.append({"role": "assistant", "content": row["response_content"]})
    return messages


async def process_request(ctx: dict[str, Any], raw: dict[str, Any]) -> str:
    rt: Runtime = ctx["rt"]
    payload = JobPayload.model_validate(raw)
    correlation_id.set(payload.correlation_id)
    try:
        row = await lifecycle.claim(rt.db, payload, rt.settings.lease_seconds)
    except _DB_ERRORS as exc:
        log.warning("claim failed; retrying", extra={"request_id": payload.request_id, "error": repr(exc)})
        raise Retry(defer=2) from exc
    if row is None:
        return "skipped"
    run = Attempt(payload)
    rt.active[payload.request_id] = run
    ACTIVE.inc()
    try:
        return await _execute(rt, run, row)
    finally:
        rt.active.pop(payload.request_id, None)
        ACTIVE.dec()


async def _execute(rt: Runtime, run: Attempt, row: asyncpg.Record) -> str:
    payload = run.payload
    request = row["normalized_request"]
    started = time.monotonic()
    agent = rt.agents.get(row["agent_id"] or "") or rt.agents.route(row["request_content"], request["integration_type"])
    model_name = model.model_for(agent, rt.settings)
    opening = []
    if payload.attempt > 1:
        opening.append(run.event("run.retrying", {"attempt": payload.attempt, "reason": "previous attempt was lost"}))
    opening.append(run.event("run.started", {"agent_id": agent.id, "model": model_name, "worker": WORKER_ID}))
    await rt.writer.append(payload.session_id, opening)
    log.info("run started", extra={"request_id": payload.request_id, "attempt": payload.attempt, "agent": agent.id})

    buffer = TokenBuffer(rt, run)

    async def generate() -> None:
        messages = [{"role": "system", "content": agent.system_prompt}] if agent.system_prompt else []
        messages += await _history(rt.db, payload.session_id, row["id"], rt.settings.history_turns)
        messages.append({"role": "user", "content": row["request_content"]})
        with tracing.span("model call", attributes={"gen_ai.request.model": model_name}):
            metadata = dict(request.get("metadata") or {})
            async for text in model.stream_reply(rt.settings, model_name, messages, metadata):
                metrics.TOKENS_GENERATED.labels(model_name).inc()
                await buffer.add(text)
        await buffer.flush()

    work = asyncio.create_task(generate())
    watcher = asyncio.create_task(buffer.watch(work))
    status, error = "completed", None
    try:
        try:
            await work
        except asyncio.CancelledError:
            stop = buffer.stop_reason()
            current = asyncio.current_task()
            if stop is None or (current is not None and current.cancelling()):
                raise
            raise stop from None
    except Stop as stop:
        if stop.fenced:
            log.warning("lease lost; abandoning attempt", extra={"request_id": payload.request_id})
            RUNS.labels("fenced").inc()
            return "fenced"
        status, error = "cancelled", stop.reason
    except Exception as exc:
        log.warning("model call failed", extra={"request_id": payload.request_id, "error": repr(exc)})
        status, error = "failed", model.describe_error(exc)
    finally:
        watcher.cancel()
    return await _finish(rt, run, agent.id, model_name, status, error, started)


async def _finish(
    rt: Runtime, run: Attempt, agent_id: str, model_name: str, status: str, error: str | None, started: float
) -> str:
    payload = run.payload
    reply = "".join(run.parts)
    elapsed_ms = int((time.monotonic() - started) * 1000)
    if status == "completed":
        terminal = [run.event("message", {"content": reply, "agent_id": agent_id}),
                    run.event("run.completed", {"processing_time_ms": elapsed_ms})]
    elif status == "cancelled":
        terminal = [run.event("run.cancelled", {"reason": error})]
    else:
        terminal = [run.event("run.failed", {"error": error})]
    # Renewing the lease proves this attempt still owns the request before it speaks for it,
    # and keeps it owned for the few milliseconds until `finish`.
    if not await lifecycle.heartbeat(rt.db, [(payload.request_id, payload.attempt, reply, run.last_stream_id)],
                                     rt.settings.lease_seconds):
        RUNS.labels("fenced").inc()
        return "fenced"
    await rt.writer.append(payload.session_id, terminal)
    async for retry in AsyncRetrying(stop=stop_after_delay(rt.settings.lease_seconds * 2), wait=wait_fixed(0.5),
                                     retry=retry_if_exception_type(_DB_ERRORS), reraise=True):
        with retry:
            applied, upcoming = await lifecycle.finish(
                rt.db, payload, status=status, response=reply, error=error if status != "completed" else None,
                agent_id=agent_id, metadata={"model": model_name},
            )
    if not applied:
        RUNS.labels("fenced").inc()
        return "fenced"
    await rt.writer.append(payload.session_id, [run.event("done", {"request_id": payload.request_id,
                                                                   "status": status})])
    await rt.streams.delete(cancel_key(payload.session_id, payload.request_id, rt.settings.stream_buckets))
    if upcoming:
        await queue.enqueue(rt.queue, *upcoming)
    RUNS.labels(status).inc()
    log.info("run finished", extra={"request_id": payload.request_id, "status": status, "ms": elapsed_ms})
    return status
