"""`process_flow_run`: executes a flow run's DAG on the agent workers, resumable after a crash.

Ready tasks run in parallel, each with its own retries and timeout. Every task's state is
persisted as it changes, so an attempt that takes over a lost worker's run (after its lease
lapsed and the reaper requeued it) skips the tasks that already completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import orjson
from arq import Retry

from common.flows import admission, functions
from common.flows.errors import FinalTaskError, TaskError, public_message, scrub
from common.flows.jobs import RunJob, enqueue_run
from common.flows.model import FlowDefinition, FlowTask
from common.flows.policies import PolicyContext, PolicyViolation, configured_engine
from common.flows.runs import CANCELLED, COMPLETED, FAILED, RunStore
from common.flows.templates import render
from common.platform import outbound, sink
from common.platform.credentials import Principal
from common.platform.keys import cancel_key, run_cancel_key
from common.platform.logging import correlation_id
from common.platform.outages import POSTGRES_ERRORS, STORE_ERRORS, every, outlast
from common.queue.worker import settled
from common.requests import ending, intake
from common.requests import repository as request_repo
from common.requests.models import IntegrationType, RequestBody
from common.sessions import repository as session_repo
from common.streams.protocol import Event
from workers import flow_usage, model
from workers.attempt import Stop
from workers.maintenance import RETRY_GRACE_SECONDS, count_found, reap_pass
from workers.metering import Meter
from workers.runner import WorkerRuntime, persist, persist_append

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
CANCEL_POLL_SECONDS = 0.25
AGENT_POLL_SECONDS = 0.2
FINISH_GRACE_SECONDS = 60  # the job's ARQ timeout over FLOW_TIMEOUT_SECONDS: the run fails itself first
ANNOUNCE_WAIT_SECONDS = 5.0

T = TypeVar("T")


class TaskFailed(Exception):
    def __init__(self, task_id: str, error: str) -> None:
        super().__init__(f"task {task_id!r} failed: {error}")
        self.task_id = task_id
        self.error = error


class Lost(Exception):
    """This attempt no longer owns the run: stop without writing anything."""


class OutputTooLarge(FinalTaskError):
    """A task's output is over FLOW_MAX_OUTPUT_BYTES, or would take the run's outputs over FLOW_MAX_RUN_OUTPUT_BYTES."""


class RateLimited(TaskError):
    """A limit refused the task's model call or agent request (common.requests.limits); a later try may pass."""


class OverBudget(FinalTaskError):
    """The run's user (or tenant) has spent a budget: no try passes before its period resets."""


@dataclass
class Execution:
    rt: WorkerRuntime
    runs: RunStore
    row: asyncpg.Record
    attempt: int
    flow: FlowDefinition
    outputs: dict[str, Any] = field(default_factory=dict)
    output_bytes: int = 0
    seq: int = 0
    lost: bool = False
    cancel_reason: str | None = None
    deadline: float = float("inf")  # time.monotonic() at which the run has used up FLOW_TIMEOUT_SECONDS
    timed_out: bool = False
    emitting: asyncio.Lock = field(default_factory=asyncio.Lock)  # one append at a time: seq order is stream order

    @property
    def run_id(self) -> str:
        return str(self.row["run_id"])

    @property
    def tenant_id(self) -> str:
        return str(self.row["tenant_id"])

    async def emit(self, *events: tuple[str, dict[str, Any]]) -> None:
        """Append events to the run's stream, retried across store errors without writing any twice; a
        newer attempt's events (or the run's `done`) on the stream fence this attempt (Lost)."""
        async with self.emitting:
            batch = []
            for kind, data in events:
                self.seq += 1
                batch.append(
                    Event(
                        type=kind,  # type: ignore[arg-type]
                        request_id=self.run_id,
                        attempt=self.attempt,
                        seq=self.seq,
                        data=data,
                    )
                )
            try:
                written = await persist_append(
                    "run stream append", lambda dedupe: self.runs.events(self.run_id, batch, dedupe=dedupe), self
                )
            except Stop:
                raise Lost from None
            if not written:
                raise Lost

    def scope(self) -> dict[str, Any]:
        return {
            "input": self.row["input_data"],
            "run": {"id": self.run_id, "tenant_id": self.tenant_id},
            "tasks": {task_id: {"output": output} for task_id, output in self.outputs.items()},
        }


async def process_flow_run(ctx: dict[str, Any], raw: dict[str, Any]) -> str:
    rt: WorkerRuntime = ctx["rt"]
    job = RunJob.model_validate(raw)
    correlation_id.set(job.correlation_id)
    runs = RunStore.of(rt)
    try:
        claimed = await runs.claim(job.run_id, job.tenant_id, job.attempt, rt.settings.lease_seconds, rt.holder())
    except POSTGRES_ERRORS as exc:
        raise Retry(defer=2) from exc
    if claimed is None:
        return "skipped"
    settled(ctx)
    row = await persist(
        "run row",
        lambda: rt.db.fetchrow(
            "SELECT * FROM flow_runs_audit WHERE run_id = $1 AND tenant_id = $2", job.run_id, job.tenant_id
        ),
    )
    run = Execution(rt, runs, row, job.attempt, FlowDefinition.model_validate(row["flow_definition"]))
    started = row["started_at"] or datetime.now(UTC)
    used = (datetime.now(UTC) - started).total_seconds()
    run.deadline = time.monotonic() + rt.settings.flow_timeout_seconds - used
    return await _execute(run)


async def _store(run: Execution, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """One of the executor's own store calls, retried across outages (a store error is never the task's);
    a lost lease ends the wait."""
    try:
        return await persist(what, call, run)
    except Stop:
        raise Lost from None


async def _execute(run: Execution) -> str:
    states = await _store(run, "task states", lambda: run.runs.task_states(run.run_id, run.tenant_id))
    run.outputs = {t: s["output"] for t, s in states.items() if s["status"] == "completed"}
    run.output_bytes = sum(len(orjson.dumps(output)) for output in run.outputs.values())
    opening: list[tuple[str, dict[str, Any]]] = []
    if run.attempt > 1:
        opening.append(
            (
                "run.retrying",
                {"attempt": run.attempt, "reason": "previous worker was lost", "completed_tasks": sorted(run.outputs)},
            )
        )
    opening.append(
        (
            "run.started",
            {"flow_id": run.flow.id, "flow_version": run.flow.version, "resumed_tasks": sorted(run.outputs)},
        )
    )
    try:
        await run.emit(*opening)
    except Lost:
        return "fenced"
    sink.emit(
        "run.started",
        run.run_id,
        {"flow_id": run.flow.id, "attempt": run.attempt},
        tenant_id=run.tenant_id,
        correlation_id=run.row["correlation_id"],
    )
    log.info("flow run started", extra={"run_id": run.run_id, "attempt": run.attempt})
    work = asyncio.create_task(_run_dag(run))
    watcher = asyncio.create_task(_watch(run, work))
    status, error = COMPLETED, None
    try:
        await work
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        if run.lost:
            return "fenced"
        if run.timed_out:
            status, error = (
                FAILED,
                (f"the run took longer than {run.rt.settings.flow_timeout_seconds} s (FLOW_TIMEOUT_SECONDS)"),
            )
        else:
            status, error = CANCELLED, run.cancel_reason or "cancelled"
    except Lost:
        return "fenced"
    except TaskFailed as exc:
        status, error = FAILED, str(exc)
    finally:
        watcher.cancel()
    return await _finish(run, status, error)


async def _watch(run: Execution, work: asyncio.Task[None]) -> None:
    """Keep the lease and stop the work on a cancel flag, a lost lease or the run's time limit."""
    settings = run.rt.settings
    flag = run_cancel_key(run.run_id, settings.stream_buckets)
    next_beat = time.monotonic() + settings.heartbeat_seconds
    while not work.done():
        await asyncio.sleep(max(0.0, min(CANCEL_POLL_SECONDS, run.deadline - time.monotonic())))
        if time.monotonic() >= run.deadline:
            run.timed_out = True
            work.cancel()
            return
        with contextlib.suppress(Exception):
            reason = await run.rt.streams.get(flag)
            if reason is not None:
                run.cancel_reason = reason.decode() or "cancelled"
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + settings.heartbeat_seconds
            with contextlib.suppress(*POSTGRES_ERRORS):
                run.lost = not await run.runs.heartbeat(run.run_id, run.attempt, settings.lease_seconds)
        if run.lost or run.cancel_reason:
            work.cancel()
            return


async def _run_dag(run: Execution) -> None:
    """Start each task once its dependencies completed, at most FLOW_MAX_PARALLEL at a time, in definition order."""
    limit = run.rt.settings.flow_max_parallel
    todo = [t for t in run.flow.tasks if t.id not in run.outputs]
    waiting = {t.id: {d for d in t.depends_on if d not in run.outputs} for t in todo}
    dependents: dict[str, list[FlowTask]] = {}
    for task in todo:
        for dep in waiting[task.id]:
            dependents.setdefault(dep, []).append(task)
    ready = deque(t for t in todo if not waiting[t.id])
    running: dict[asyncio.Task[Any], str] = {}
    try:
        while True:
            while ready and len(running) < limit:
                task = ready.popleft()
                running[asyncio.create_task(_run_task(run, task), name=f"task:{task.id}")] = task.id
            if not running:
                return
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for done in finished:
                task_id = running.pop(done)
                run.outputs[task_id] = done.result()
                for child in dependents.get(task_id, []):
                    waiting[child.id].discard(task_id)
                    if not waiting[child.id]:
                        ready.append(child)
    finally:
        for job in running:
            job.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def _run_task(run: Execution, task: FlowTask) -> Any:
    engine = configured_engine(run.rt.settings)
    ctx = PolicyContext(run.tenant_id, run.row["user_id"], run.rt.settings)
    tries = task.retries + 1
    error = ""
    for try_number in range(1, tries + 1):
        started = functools.partial(run.runs.task_started, run.run_id, run.tenant_id, task.id, try_number)
        await _store(run, "task start", started)
        await run.emit(("task.started", {"task_id": task.id, "type": task.type, "try": try_number}))
        try:
            task_input = render(task.input, run.scope(), run.rt.settings.flow_max_render_bytes)
            for pre in engine.pre_task:
                pre.before_task(task, task_input, ctx)
            output = await asyncio.wait_for(_call(run, task, task_input, try_number), task.timeout_seconds)
            for post in engine.post_task:
                post.after_task(task, output, ctx)
            _admit_output(run, output)
        except TimeoutError:
            error = f"timed out after {task.timeout_seconds:g} s"
        except PolicyViolation as exc:
            error = scrub(str(exc))
            break  # a policy's verdict does not change on a retry
        except Lost:
            raise
        except Exception as exc:
            error = public_message(exc)
            if not isinstance(exc, TaskError):
                log.warning(
                    "flow task raised",
                    exc_info=True,
                    extra={"run_id": run.run_id, "task_id": task.id, "try": try_number},
                )
            if isinstance(exc, FinalTaskError):
                break
        else:
            completed = functools.partial(
                run.runs.task_finished, run.run_id, run.tenant_id, run.attempt, task.id, "completed", output, None
            )
            if not await _store(run, "task end", completed):
                raise Lost
            await run.emit(("task.completed", {"task_id": task.id, "try": try_number, "output": output}))
            return output
        if try_number < tries:
            await run.emit(("task.retrying", {"task_id": task.id, "try": try_number + 1, "error": error}))
            await asyncio.sleep(min(0.1 * 2 ** (try_number - 1), 5))
    await _store(
        run,
        "task end",
        lambda: run.runs.task_finished(run.run_id, run.tenant_id, run.attempt, task.id, "failed", None, error),
    )
    await run.emit(("task.failed", {"task_id": task.id, "tries": try_number, "error": error}))
    raise TaskFailed(task.id, error)


def _admit_output(run: Execution, output: Any) -> None:
    """Count a task's output against FLOW_MAX_OUTPUT_BYTES and the run's FLOW_MAX_RUN_OUTPUT_BYTES."""
    settings = run.rt.settings
    try:
        size = len(orjson.dumps(output))
    except orjson.JSONEncodeError:
        raise OutputTooLarge("the task's output is not JSON or is nested too deeply to be stored") from None
    if size > settings.flow_max_output_bytes:
        raise OutputTooLarge(
            f"the task's output is {size} bytes; at most {settings.flow_max_output_bytes}"
            " are allowed (FLOW_MAX_OUTPUT_BYTES)"
        )
    if run.output_bytes + size > settings.flow_max_run_output_bytes:
        raise OutputTooLarge(
            f"the run's outputs would be {run.output_bytes + size} bytes; at most"
            f" {settings.flow_max_run_output_bytes} are allowed (FLOW_MAX_RUN_OUTPUT_BYTES)"
        )
    run.output_bytes += size


async def _call(run: Execution, task: FlowTask, task_input: Any, try_number: int) -> Any:
    if not isinstance(task_input, dict):
        raise TaskError("a task's input must render to an object")
    if task.type == "llm":
        await _admit_work(run, f"{run.run_id}:{task.id}:{try_number}", admission.RUN_INTEGRATION, count_running=False)
        return await _llm(run, task, task_input)
    if task.type == "http":
        return await _http(task_input, task.timeout_seconds, run.rt.settings.outbound_policy())
    if task.type == "agent":
        return await _agent(run, task, task_input, try_number)
    fn = functions.get(task.type)
    if fn is None:
        raise TaskError(f"no task function {task.type!r} in this worker")
    return await fn(functions.TaskCall(run.run_id, task.id, run.tenant_id, task_input, try_number))


async def _llm(run: Execution, task: FlowTask, task_input: dict[str, Any]) -> dict[str, Any]:
    """A prompt through litellm, streamed to the run as `token` events (coalesced like replies); what it
    used, even when it fails or is stopped midway, counts for the run's user and is in its output."""
    settings = run.rt.settings
    messages = [{"role": "system", "content": str(task_input["system"])}] if task_input.get("system") else []
    messages.append({"role": "user", "content": str(task_input.get("prompt", ""))})
    name = str(task_input.get("model") or settings.llm_model or model.OFFLINE_MODEL)
    if name not in model.configured(settings, run.rt.agents):
        raise ModelRefused(f"model {name!r} is not one this deployment configured (LLM_MODEL or an agent's model)")
    parts: list[str] = []
    pending: list[str] = []
    flushed = time.monotonic()
    meter = Meter(agent_id=flow_usage.AGENT, model=name)
    try:
        async for text in model.stream_reply(settings, name, messages, {}, meter=meter):
            parts.append(text)
            pending.append(text)
            due = (time.monotonic() - flushed) * 1000 >= settings.token_flush_ms
            if due or len(pending) >= settings.token_flush_tokens:
                await run.emit(("token", {"task_id": task.id, "text": "".join(pending)}))
                pending.clear()
                flushed = time.monotonic()
        if pending:
            await run.emit(("token", {"task_id": task.id, "text": "".join(pending)}))
    finally:
        used = await flow_usage.measure(run.rt, meter, "".join(parts))
        await flow_usage.record(run.rt, run.tenant_id, run.row["user_id"], name, used, run.row["correlation_id"])
    return {"text": "".join(parts), "model": name, "usage": used.as_data()}


class HttpTaskError(TaskError):
    pass


class UrlRefused(FinalTaskError):
    """The outbound guard refused the task's URL; the same URL is refused again."""


class ModelRefused(FinalTaskError):
    """An llm task named a model the deployment did not configure; a retry is refused again."""


async def _http(task_input: dict[str, Any], seconds: float, rules: outbound.Policy) -> dict[str, Any]:
    """One request through the outbound guard: public addresses only (or allow-listed), no redirects,
    the answer cut at the size cap (`truncated` then says so)."""
    method = str(task_input.get("method", "GET")).upper()
    url, headers, content = task_input.get("url"), task_input.get("headers") or {}, task_input.get("body")
    if not url:
        raise FinalTaskError("an http task needs input.url")
    if not isinstance(headers, dict):
        raise FinalTaskError("input.headers must be an object")
    if content is not None and not isinstance(content, str):
        raise FinalTaskError("input.body must be a string (input.json sends JSON)")
    try:
        answer = await outbound.request(
            method,
            str(url),
            rules,
            headers={str(k): str(v) for k, v in headers.items()},
            json=task_input.get("json"),
            content=content,
            seconds=seconds,
        )
    except outbound.Refused as exc:
        raise UrlRefused(str(exc)) from None
    except outbound.OutboundError as exc:  # its message is the guard's one safe line for every cause
        raise HttpTaskError(str(exc)) from None
    body = answer.json()
    output: dict[str, Any] = {"status": answer.status, "json": body}
    if body is None:
        output["text"] = answer.text()[:10_000]
    if answer.truncated:
        output["truncated"] = True
    if answer.status >= 400:
        raise HttpTaskError(f"{method} answered {answer.status}")
    return output


class FlowAgentRequest(RequestBody):
    """The request a flow's `agent` task sends for the run's user, in the run's session."""

    run_id: str
    task_id: str

    def integration(self) -> IntegrationType:
        return "tool"

    def integration_context(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "task_id": self.task_id}


async def _agent(run: Execution, task: FlowTask, task_input: dict[str, Any], try_number: int) -> dict[str, Any]:
    """A message to a relaygate agent in the run's own session, sent through the one request intake; its reply
    is the output.

    The idempotency key names (run, task, try), so an attempt that takes over the run waits for the
    request the lost worker already made instead of sending it twice.
    """
    rt = run.rt
    content = str(task_input.get("content") or "")
    if not content:
        raise TaskError("an agent task needs input.content")
    who = Principal(tenant_id=run.tenant_id, user_id=run.row["user_id"])
    session_id = str(run.row["session_id"])
    await _store(
        run, "session", lambda: session_repo.ensure(rt.db, who, session_id, "tool", rt.settings.session_ttl_seconds)
    )
    body = FlowAgentRequest(
        content=content, agent_id=task_input.get("agent_id"), session_id=session_id, run_id=run.run_id, task_id=task.id
    )
    try:
        # Retried under the same idempotency key: a retry after a store error answers the request it made.
        admitted = await _store(
            run,
            "agent request",
            lambda: intake.accept(
                rt,
                who,
                body,
                correlation_id=run.row["correlation_id"],
                idempotency_key=f"flow:{run.run_id}:{task.id}:{try_number}",
            ),
        )
    except intake.Limited as exc:
        raise OverBudget(exc.detail) if exc.refusal.limit == "budget" else RateLimited(exc.detail) from None
    except intake.Refused as exc:
        raise FinalTaskError(f"agent request refused: {exc.detail}") from None
    request_id = admitted.request_id
    try:
        while True:
            row = await _store(run, "agent reply", lambda: request_repo.outcome(rt.db, run.tenant_id, request_id))
            if row is None:
                raise TaskError(f"agent request {request_id} is gone")
            if row["status"] == "completed":
                return {
                    "content": row["response_content"],
                    "agent_id": row["agent_id"],
                    "request_id": request_id,
                    "session_id": session_id,
                }
            if row["status"] in ("failed", "cancelled"):
                raise TaskError(f"agent request {row['status']}: {row['error']}")
            await asyncio.sleep(AGENT_POLL_SECONDS)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await rt.streams.set(
                cancel_key(session_id, request_id, rt.settings.stream_buckets),
                "flow task stopped",
                ex=rt.settings.request_timeout_seconds,
            )
        raise


async def _admit_work(run: Execution, work_id: str, integration: str, *, count_running: bool = True) -> None:
    """An llm call or an agent request counts against its user's limits and budgets like a request does."""
    refusal = await _store(
        run,
        "admission",
        lambda: admission.admit(
            run.rt.limits,
            run.rt.db,
            run.tenant_id,
            run.row["user_id"],
            integration,
            work_id,
            count_running=count_running,
            budgeted=True,
        ),
    )
    if refusal:
        raise OverBudget(refusal.detail) if refusal.limit == "budget" else RateLimited(refusal.detail)


async def _finish(run: Execution, status: str, error: str | None) -> str:
    """The run's end: its row first (with `done_pending`), then its closing events. If those cannot be
    written now (Redis away, or this process dies), `repair_endings_once` writes them."""
    output = {"tasks": run.outputs} if status == COMPLETED else None
    # Not `_store`: the change is conditional on this attempt, and its lease may lapse while Postgres is away.
    row = await persist(
        "run end", lambda: run.runs.finish(run.run_id, run.tenant_id, run.attempt, status, output=output, error=error)
    )
    if row is None:
        return "fenced"
    kind = status.lower()
    await _announce(run.runs, row, kind, {"output": output} if status == COMPLETED else {"error": error}, run.seq + 1)
    with contextlib.suppress(*STORE_ERRORS):
        await run.rt.streams.delete(run_cancel_key(run.run_id, run.rt.settings.stream_buckets))
    log.info("flow run finished", extra={"run_id": run.run_id, "status": status})
    return kind


async def _announce(runs: RunStore, row: asyncpg.Record, kind: str, data: dict[str, Any], seq: int = 0) -> None:
    """`announce_end`, retried across store errors for ANNOUNCE_WAIT_SECONDS; after that the row's
    `done_pending` leaves it to `repair_endings_once`."""
    deadline = time.monotonic() + ANNOUNCE_WAIT_SECONDS
    while True:
        try:
            await runs.announce_end(row, kind, data, seq=seq)
            return
        except STORE_ERRORS as exc:
            if time.monotonic() >= deadline:
                log.warning(
                    "run ending not written yet; the repair writes it",
                    extra={"run_id": row["run_id"], "error": repr(exc)},
                )
                return
            await asyncio.sleep(0.25)


async def repair_endings_once(rt: WorkerRuntime) -> int:
    """Write the closing events of terminal runs whose ender did not (it died, or Redis was away). Safe in
    every worker at once: the run's stream fence writes each ending once."""
    runs = RunStore.of(rt)
    rows = await runs.unended(ending.SWEEP_GRACE_SECONDS)
    if rows:
        log.warning("writing run endings their writer did not", extra={"runs": [r["run_id"] for r in rows]})
    for row in rows:
        data = {"output": row["output_data"]} if row["status"] == COMPLETED else {"error": row["error_message"]}
        await _announce(runs, row, row["status"].lower(), data)
    return len(rows)


async def reap_once(rt: WorkerRuntime) -> None:
    """Requeue runs whose executor was lost (as workers.maintenance.reap_once finds lost requests, with the
    same outage rule); fail those lost too often (ending their streams)."""
    runs = RunStore.of(rt)
    unrenewed, lease = 2 * rt.settings.heartbeat_seconds, rt.settings.lease_seconds
    requeued, failed = await reap_pass(
        rt,
        lambda: runs.suspects(unrenewed, lease),
        lambda gone, spare: runs.reap_expired(MAX_ATTEMPTS, gone, unrenewed, lease, spare),
    )
    count_found(requeued, failed)
    for row in requeued:
        log.warning(
            "flow run's worker gone; requeued" if row["holder_gone"] else "flow run lease expired; requeued",
            extra={"run_id": row["run_id"], "attempt": row["attempt"], "holder": row["lease_holder"]},
        )
        # As for requests (workers.maintenance.reap_once): the row is requeued already, so wait out Redis.
        await outlast("requeue run", functools.partial(_enqueue_row, rt, row), max_wait=1.0)
    for row in failed:
        await _announce(runs, row, "failed", {"error": "the run's worker was lost too many times"})
    await repair_endings_once(rt)
    await requeue_retries_once(rt)


async def requeue_retries_once(rt: WorkerRuntime) -> int:
    """Queue the jobs of retried runs that no worker claimed a few seconds after their requeue (as
    workers.maintenance.requeue_retries_once does for requests)."""
    rows = await RunStore.of(rt).stalled(RETRY_GRACE_SECONDS, retried=True)
    queued = sum([await _enqueue_row(rt, row) for row in rows])
    if queued:
        log.warning("retried flow runs queued again: their requeue's job was lost", extra={"runs": queued})
    return queued


async def sweep_once(rt: WorkerRuntime) -> None:
    """Queue PENDING runs nobody picked up (the queue was down when they were created)."""
    for row in await RunStore.of(rt).stalled(older_than_seconds=10):
        await _enqueue_row(rt, row)


async def _enqueue_row(rt: WorkerRuntime, row: Mapping[str, Any]) -> bool:
    job = RunJob(
        run_id=row["run_id"], tenant_id=row["tenant_id"], attempt=row["attempt"], correlation_id=row["correlation_id"]
    )
    return await enqueue_run(rt.queue, row["feature"], job)


def start(rt: WorkerRuntime) -> list[asyncio.Task[None]]:
    """The flow runs' reaper and sweep, beside the requests' own (workers.maintenance)."""
    configured_engine(rt.settings)
    return [
        asyncio.create_task(every(rt.settings.reaper_interval_seconds, reap_once, rt), name="flow-reaper"),
        asyncio.create_task(every(rt.settings.maintenance_interval_seconds, sweep_once, rt), name="flow-sweeps"),
    ]
