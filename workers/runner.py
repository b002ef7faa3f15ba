"""`process_request`: one attempt of one request, from claim to terminal event.

Tokens go to the worker's one `Flusher`; the lease heartbeat is one batched loop for all runs
(workers.maintenance). Redis and Postgres errors are store errors: the step waits and retries,
it never fails the request as a model error. `_finish` is the one place an outcome is final.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import asyncpg
from arq import Retry
from arq.connections import ArqRedis
from prometheus_client import Counter, Gauge

from common.agents import tool_steps
from common.agents.registry import AgentRegistry
from common.delivery import configs as channel_configs
from common.delivery import jobs as delivery
from common.platform import metrics, sink, tracing
from common.platform.keys import cancel_key
from common.platform.logging import correlation_id
from common.platform.outages import STORE_ERRORS
from common.platform.presence import Presence
from common.platform.settings import Settings
from common.queue import enqueue as queue
from common.queue.worker import settled
from common.requests import ending, lifecycle
from common.requests.limits import Limits
from common.requests.models import JobPayload
from common.streams.protocol import Event, StreamsRedis
from common.streams.writer import StreamWriter
from common.usage import budgets
from common.usage.budgets import BudgetBook
from common.usage.models import Usage
from workers import agent_loop, metering, model
from workers.attempt import Attempt, Stop
from workers.claims import ClaimBatcher, Claimed
from workers.flusher import TOKENS, Flusher
from workers.mcp_client import McpPool
from workers.priority import Start, StartPriority

__all__ = ["TOKENS", "Attempt", "Stop", "WorkerRuntime", "process_request"]

log = logging.getLogger(__name__)

RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)

RUNS = Counter("relaygate_worker_runs_total", "Finished request attempts", ["status"])
STORE_RETRIES = Counter("relaygate_worker_store_retries_total", "Store calls retried after a store error")
ACTIVE = Gauge("relaygate_worker_active_runs", "Attempts running in this worker")

T = TypeVar("T")


@dataclass
class WorkerRuntime:
    """What every job of this worker process shares."""

    settings: Settings
    db: asyncpg.Pool
    streams: StreamsRedis
    queue: ArqRedis
    writer: StreamWriter
    agents: AgentRegistry
    active: dict[str, Attempt] = field(default_factory=dict)
    draining: bool = False
    handbacks: set[asyncio.Task[None]] = field(default_factory=set)
    idle_seconds: Callable[[], float] | None = None  # the event loop's time waiting in select (common.platform.tuning)
    presence: Presence | None = None  # None: claims record no holder; lost attempts wait out their lease
    postgres_trouble_at: float = float("-inf")  # when this process last saw Postgres fail or stall (monotonic)
    flusher: Flusher = field(init=False)
    claims: ClaimBatcher = field(init=False)
    priority: StartPriority = field(init=False)
    limits: Limits = field(init=False)
    budgets: BudgetBook = field(init=False)
    tools: McpPool = field(init=False)
    ended: ending.EndedMarks = field(init=False)

    def __post_init__(self) -> None:
        self.limits = Limits(self.streams, self.settings)
        self.budgets = BudgetBook(self.db, self.settings)
        self.tools = McpPool(self.settings)
        self.flusher = Flusher(self.settings, self.writer, self.active)
        self.claims = ClaimBatcher(self.db, self.settings.lease_seconds, self.settings.history_turns, self.holder)
        self.priority = StartPriority(self.settings.worker_start_priority_ms, self.idle_seconds)
        self.ended = ending.EndedMarks(self.db)

    def holder(self) -> int | None:
        """The presence key this process's claims record (None without presence)."""
        return self.presence.key if self.presence else None

    @contextlib.contextmanager
    def tracking(self, run: Attempt) -> Iterator[None]:
        """`run` in `active` (the heartbeat renews its lease, the flusher writes its tokens) while it runs.
        A newer attempt of the request started here meanwhile takes the entry over and halts the older
        one (superseded: out of `active`, nothing would renew or flush it), which, ending after it, must
        not take the newer one out (its lease would lapse)."""
        request_id = run.payload.request_id
        older = self.active.get(request_id)
        if older is not None:
            older.halt(Stop("superseded by a newer attempt", fenced=True))
        self.active[request_id] = run
        ACTIVE.set(len(self.active))
        try:
            yield
        finally:
            if self.active.get(request_id) is run:
                del self.active[request_id]
            ACTIVE.set(len(self.active))  # a superseded run winding down no longer counts


async def append(rt: WorkerRuntime, run: Attempt, events: list[Event]) -> None:
    """Append a run's own events, retried across store errors without writing any twice; a newer
    attempt of the request (or its ending) on the stream fences this one."""

    async def write(dedupe: bool) -> bool:
        return (await rt.writer.append_many([(run.payload.session_id, events)], dedupe=dedupe)).refused[0]

    if await persist_append("stream append", write, run):
        raise Stop("superseded by a newer attempt", fenced=True)


async def persist_append(what: str, write: Callable[[bool], Awaitable[T]], run: Leased) -> T:
    """`persist` for a stream append: `write(dedupe)`, every try after the first deduplicating (a write
    whose reply was lost may have landed)."""
    tries = 0

    async def once() -> T:
        nonlocal tries
        tries += 1
        return await write(tries > 1)

    return await persist(what, once, run)


class Leased(Protocol):
    lost: bool  # its lease was taken over: its writes are fenced


async def persist(what: str, call: Callable[[], Awaitable[T]], run: Leased | None = None) -> T:
    """Run a store call until it succeeds; a lost lease ends the wait (the attempt is fenced)."""
    tries = 0
    while True:
        try:
            return await call()
        except STORE_ERRORS as exc:
            if run is not None and run.lost:
                raise Stop("lease lost", fenced=True) from exc
            if tries == 0:
                log.warning("store unavailable; retrying", extra={"step": what, "error": repr(exc)})
            STORE_RETRIES.inc()
            await asyncio.sleep(RETRY_SECONDS[min(tries, len(RETRY_SECONDS) - 1)])
            tries += 1


async def process_request(ctx: dict[str, Any], raw: dict[str, Any]) -> str:
    rt: WorkerRuntime = ctx["rt"]
    payload = JobPayload.model_validate(raw)
    correlation_id.set(payload.correlation_id)
    start = rt.priority.start()
    try:
        return await _claim_and_execute(rt, payload, start, lambda: settled(ctx))
    finally:
        start.done()


async def _claim_and_execute(rt: WorkerRuntime, payload: JobPayload, start: Start, in_hand: Callable[[], None]) -> str:
    try:
        claimed = await rt.claims.claim(payload)
    except STORE_ERRORS as exc:
        log.warning("claim failed; retrying", extra={"request_id": payload.request_id, "error": repr(exc)})
        raise Retry(defer=2) from exc
    if claimed is None:
        return "skipped"
    in_hand()
    run = Attempt(
        payload,
        user_id=claimed.row["user_id"],
        cancel_key=cancel_key(payload.session_id, payload.request_id, rt.settings.stream_buckets),
    )
    with rt.tracking(run):
        try:
            return await _execute(rt, run, claimed, start)
        except asyncio.CancelledError:
            if rt.draining and not run.lost:
                task = asyncio.create_task(_hand_back(rt, run))
                rt.handbacks.add(task)
                task.add_done_callback(rt.handbacks.discard)
            raise


async def _hand_back(rt: WorkerRuntime, run: Attempt) -> None:
    """A stopping worker gives a run it cannot finish back to the queue, as the next attempt, now."""
    run.halt(Stop("worker stopping", fenced=True))
    used = await _usage(rt, run, run.meter.model)
    upcoming = await persist("hand back", lambda: lifecycle.release(rt.db, run.payload, used))
    if upcoming:
        metrics.count_usage(run.meter.agent_id, run.meter.model, used)
        await budgets.count(rt.streams, run.payload.tenant_id, run.user_id, used, run.payload.correlation_id)
        await persist("enqueue", lambda: queue.enqueue(rt.queue, *upcoming))
        log.info("run handed back", extra={"request_id": run.payload.request_id, "attempt": upcoming[1].attempt})


async def _execute(rt: WorkerRuntime, run: Attempt, claimed: Claimed, start: Start) -> str:
    payload, row = run.payload, claimed.row
    request = row["normalized_request"]
    started = time.monotonic()
    agent = rt.agents.get(row["agent_id"] or "") or rt.agents.route(row["request_content"], request["integration_type"])
    model_name = run.meter.model = model.model_for(agent, rt.settings)
    run.meter.agent_id = agent.id
    opening = []
    if payload.attempt > 1:
        decided = agent.tools is not None and await persist(
            "tool steps", lambda: tool_steps.decided(rt.db, payload.request_id), run
        )
        reason = "a person decided on a tool call" if decided else "previous attempt was lost"
        opening.append(run.event("run.retrying", {"attempt": payload.attempt, "reason": reason}))
    opening.append(run.event("run.started", {"agent_id": agent.id, "model": model_name}))
    log.info("run started", extra={"request_id": payload.request_id, "attempt": payload.attempt, "agent": agent.id})

    async def generate() -> None:
        await append(rt, run, opening)
        messages: list[dict[str, Any]] = []
        if agent.system_prompt:
            messages.append({"role": "system", "content": agent.system_prompt})
        given = request.get("conversation")
        messages += claimed.history if given is None else given
        messages.append({"role": "user", "content": row["request_content"]})
        tokens = 0

        async def on_text(text: str) -> None:
            nonlocal tokens
            rt.flusher.add(run, text)
            tokens += 1
            if tokens == 1:
                start.done()
            else:
                await rt.priority.pause()

        with tracing.span("model call", attributes={"gen_ai.request.model": model_name}):
            metadata = dict(request.get("metadata") or {})
            try:
                if agent.tools is not None:
                    start.done()
                    await agent_loop.run(rt, run, agent, model_name, messages, metadata, on_text)
                else:
                    async for text in model.stream_reply(rt.settings, model_name, messages, metadata, meter=run.meter):
                        await on_text(text)
            finally:
                metrics.TOKENS_GENERATED.labels(model_name).inc(tokens)
        await rt.flusher.drain(run)

    run.work = asyncio.create_task(generate())
    status, error = "completed", None
    try:
        try:
            await run.work
            if run.stop is not None:
                raise run.stop
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if run.stop is None or (current is not None and current.cancelling()):
                raise
            raise run.stop from None
    except Stop as stop:
        if stop.fenced:
            log.warning("lease lost; abandoning attempt", extra={"request_id": payload.request_id})
            RUNS.labels("fenced").inc()
            return "fenced"
        status, error = "cancelled", stop.reason
    except agent_loop.Parked:
        return await _park(rt, run)
    except agent_loop.AgentStopped as exc:
        status, error = "failed", str(exc)
    except Exception as exc:
        log.warning("model call failed", extra={"request_id": payload.request_id, "error": repr(exc)})
        status, error = "failed", model.describe_error(exc)
    try:
        return await _finish(rt, run, agent.id, model_name, status, error, started)
    except Stop:
        RUNS.labels("fenced").inc()
        return "fenced"


async def _park(rt: WorkerRuntime, run: Attempt) -> str:
    """The request waits for a person's approval with no worker: its row says `waiting` (with what this
    attempt used added) until a decision queues it again, or its deadline (APPROVAL_TIMEOUT_SECONDS) fails it.
    A person who decided before the attempt got here finds it queued again at once."""
    payload = run.payload
    used = await _usage(rt, run, run.meter.model)
    parked, upcoming = await persist(
        "park", lambda: lifecycle.park(rt.db, payload, rt.settings.approval_timeout_seconds, used)
    )
    if parked or upcoming:
        metrics.count_usage(run.meter.agent_id, run.meter.model, used)
        await budgets.count(rt.streams, payload.tenant_id, run.user_id, used, payload.correlation_id)
    if upcoming:
        await persist("enqueue", lambda: queue.enqueue(rt.queue, *upcoming))
    status = "waiting" if parked else "decided" if upcoming else "fenced"
    RUNS.labels(status).inc()
    log.info(
        {
            "waiting": "run waiting for an approval",
            "decided": "every call it waits on is decided already; queued again",
            "fenced": "lease lost; abandoning attempt",
        }[status],
        extra={"request_id": payload.request_id},
    )
    return status


async def _finish(
    rt: WorkerRuntime, run: Attempt, agent_id: str, model_name: str, status: str, error: str | None, started: float
) -> str:
    """The one place a request's outcome becomes final: the row first, then the stream, then what follows.

    The row's conditional update proves this attempt still owns the request. Its closing events go
    out in one fenced append after it, so no other attempt can end it too; a worker that dies in
    between leaves `done_pending` set for the ending sweep (common.requests.ending).
    """
    payload = run.payload
    reply = "".join(run.parts)
    elapsed_ms = int((time.monotonic() - started) * 1000)
    used = await _usage(rt, run, model_name)
    tries = [0]

    async def finish_once() -> tuple[lifecycle.Finished | None, tuple[str, JobPayload] | None]:
        tries[0] += 1
        defaults_deliver = status == "completed" and await channel_configs.defaults_deliver_alone(rt.db, rt.settings)
        ended, upcoming = await lifecycle.finish(
            rt.db,
            payload,
            status=status,
            response=reply,
            error=error if status != "completed" else None,
            agent_id=agent_id,
            metadata={"model": model_name},
            usage=used,
            defaults_deliver=defaults_deliver,
        )
        if ended is None and tries[0] > 1:
            ended = await lifecycle.ended_as(rt.db, payload, status)
            if ended is not None:  # an earlier try committed
                return ended, await lifecycle.advance(rt.db, payload.session_id)
        return ended, upcoming

    ended, upcoming = await persist("finish", finish_once)
    if ended is None:
        RUNS.labels("fenced").inc()
        return "fenced"
    metrics.count_usage(agent_id, model_name, used)
    closing = ending.closing_events(
        payload.request_id,
        payload.attempt,
        status,
        reply=reply,
        error=error,
        agent_id=agent_id,
        processing_time_ms=elapsed_ms,
        usage=ended.usage,
        output_chunks=len(run.parts),
        seq=run.seq + 1,
    )
    await persist("stream end", lambda: rt.writer.end(payload.session_id, closing))
    if status == "cancelled":  # a flag set too late to stop the run expires with its TTL, unread
        await persist("cancel flag", lambda: rt.streams.delete(run.cancel_key))
    if upcoming:
        await persist("enqueue", lambda: queue.enqueue(rt.queue, *upcoming))
    rt.ended.add(payload.request_id)
    await delivery.after_request(rt.queue, payload, ended)
    await budgets.count(rt.streams, payload.tenant_id, run.user_id, used, payload.correlation_id)
    RUNS.labels(status).inc()
    sink.emit(
        f"request.{status}",
        payload.request_id,
        {"session_id": payload.session_id, "agent_id": agent_id},
        tenant_id=payload.tenant_id,
        correlation_id=payload.correlation_id,
    )
    sink.emit(
        "session.updated",
        payload.session_id,
        {"last_request_id": payload.request_id, "current_agent_id": agent_id},
        tenant_id=payload.tenant_id,
        correlation_id=payload.correlation_id,
    )
    log.info("run finished", extra={"request_id": payload.request_id, "status": status, "ms": elapsed_ms})
    return status


async def _usage(rt: WorkerRuntime, run: Attempt, model_name: str) -> Usage:
    """What this attempt used; a failure to count is logged and counts nothing (it never fails the run)."""
    try:
        return await metering.measure(run.meter, model_name, "".join(run.parts), rt.agents.prices, model.litellm_module)
    except Exception as exc:
        log.warning("counting usage failed", extra={"request_id": run.payload.request_id, "error": repr(exc)})
        return Usage()
