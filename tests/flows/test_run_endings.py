"""A flow run ends once, whatever fails under it, as a request does: the executor's own store calls ride out
an outage instead of failing the task; a retried append writes nothing twice; an attempt another one took
over writes nothing more; and a run whose closing events were never written (its worker died, or Redis was
away, after its row ended) gets them from any worker's repair, once. On real Postgres and Valkey."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from arq.constants import job_key_prefix
from redis.exceptions import ConnectionError as RedisConnectionError

from common.flows.runs import RunStore
from common.platform.keys import queue_name
from common.requests import ending
from common.streams.protocol import Event
from tests.flows.conftest import Executor, start_run, task
from workers import flows
from workers.offline_model import compose_reply


async def test_a_lost_reply_and_an_outage_while_writing_tokens_neither_fail_the_task_nor_repeat_one(
    gateway_app: Any, executor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    ex: Executor = await executor(offline_model_tokens=20, offline_model_tokens_per_second=1000)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    real = RunStore.events
    faults = iter(["lost reply", "down", "down"])

    async def flaky(self: RunStore, run_id: str, events: list[Event], *, dedupe: bool = False) -> bool:
        fault = next(faults, None) if any(e.type == "token" for e in events) else None
        if fault == "lost reply":  # written, but the answer never came back
            await real(self, run_id, events, dedupe=dedupe)
            raise RedisConnectionError("Connection closed by server.")
        if fault == "down":
            raise RedisConnectionError("Error 111 connecting: Connection refused.")
        return await real(self, run_id, events, dedupe=dedupe)

    monkeypatch.setattr(RunStore, "events", flaky)
    async with gw.client("alice", tenant) as c:
        run_id = await start_run(c, tenant, task("ask", "llm", input={"prompt": "ride it out"}))
    assert await ex.run(run_id, tenant) == "completed"
    assert next(faults, None) is None, "the faults were not all met"
    events = await ex.events(run_id)
    assert [e.type for e in events if e.type.startswith(("task.", "run."))] == [
        "run.started",
        "task.started",
        "task.completed",
        "run.completed",
    ]
    assert "".join(e.data["text"] for e in events if e.type == "token") == "".join(compose_reply("ride it out", 20))
    numbered = [e.seq for e in events if e.seq]
    assert numbered == list(range(1, len(numbered) + 1)), "an event was written twice or skipped"
    assert events[-1].type == "done"


async def test_an_attempt_taken_over_writes_nothing_more(gateway_app: Any, executor: Any) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    ex: Executor = await executor()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    async with gw.client("alice", tenant) as c:
        run_id = await start_run(c, tenant, task("a", "sleep", input={"seconds": 0}))
    newer = Event(type="run.retrying", request_id=run_id, attempt=2, seq=1, data={"attempt": 2})
    assert await RunStore.of(gw.gateway).events(run_id, [newer])  # attempt 2 wrote first: the fence says 2
    assert await ex.run(run_id, tenant) == "fenced"  # attempt 1, late
    assert [(e.type, e.attempt) for e in await ex.events(run_id)] == [("run.retrying", 2)]


async def test_a_run_whose_ending_was_not_written_is_ended_by_the_repair_once(
    gateway_app: Any, executor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    ex: Executor = await executor()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    real = RunStore.announce_end

    async def redis_away(*args: Any, **kwargs: Any) -> None:
        raise RedisConnectionError("Error 111 connecting: Connection refused.")

    monkeypatch.setattr(RunStore, "announce_end", redis_away)
    monkeypatch.setattr(flows, "ANNOUNCE_WAIT_SECONDS", 0.3)
    async with gw.client("alice", tenant) as c:
        run_id = await start_run(c, tenant, task("a", "echo", input={"x": 1}))
        assert await ex.run(run_id, tenant) == "completed"
        assert [e.type for e in await ex.events(run_id)][-1] == "task.completed"  # no ending on the stream yet
        assert await gw.gateway.db.fetchval("SELECT done_pending FROM flow_runs_audit WHERE run_id = $1", run_id)

        monkeypatch.setattr(RunStore, "announce_end", real)
        monkeypatch.setattr(ending, "SWEEP_GRACE_SECONDS", 0.0)
        for _ in range(2):  # a second repair (or another worker's) writes nothing more
            await flows.repair_endings_once(ex.rt)
        closing = [e for e in await ex.events(run_id) if e.type in ("run.completed", "done")]
        assert [e.type for e in closing] == ["run.completed", "done"]
        assert closing[0].data["output"] == {"tasks": {"a": {"x": 1}}}
        assert not await gw.gateway.db.fetchval("SELECT done_pending FROM flow_runs_audit WHERE run_id = $1", run_id)
        assert (await c.get(f"/v1/runs/{run_id}")).json()["status"] == "COMPLETED"


async def test_a_retried_run_whose_job_was_lost_is_queued_again_in_seconds(
    gateway_app: Any, executor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reaper that dies between requeueing a run and queueing its job leaves it PENDING without one:
    the next reaper pass queues it once it is a few seconds old, not the stalled sweep 10-20 s later."""
    feature = f"idle-{uuid.uuid4().hex[:6]}"
    gw = await gateway_app(flow_feature=feature)
    ex: Executor = await executor()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    async with gw.client("alice", tenant) as c:
        run_id = await start_run(c, tenant, task("a", "sleep", input={"seconds": 0}))
    db = ex.rt.db
    await db.execute(
        "UPDATE flow_runs_audit SET attempt = 2, updated_at = now() - interval '1 second' WHERE run_id = $1", run_id
    )
    stalled = RunStore.stalled

    async def ours(self: RunStore, older_than_seconds: float, *, retried: bool = False) -> list[Any]:
        return [r for r in await stalled(self, older_than_seconds, retried=retried) if str(r["run_id"]) == run_id]

    monkeypatch.setattr(RunStore, "stalled", ours)
    job = f"flow:{run_id}:2"
    try:
        assert await flows.requeue_retries_once(ex.rt) == 0  # requeued a second ago: its job may be on its way
        await db.execute(
            "UPDATE flow_runs_audit SET updated_at = now() - interval '5 seconds' WHERE run_id = $1", run_id
        )
        assert await flows.requeue_retries_once(ex.rt) == 1
        assert await ex.rt.queue.zscore(queue_name(feature), job) is not None
        assert await flows.requeue_retries_once(ex.rt) == 0  # queued: not doubled
    finally:
        await ex.rt.queue.delete(queue_name(feature), job_key_prefix + job)
