"""Flow runs executed by real worker processes: parallelism, references, retries, timeouts, kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from common.platform.keys import run_stream_key
from common.streams.protocol import Event
from tests.conftest import Stack
from tests.flows.conftest import dag, task
from tests.support.streams import read_until


def _start(c: httpx.Client, tenant: str, *tasks: dict[str, Any], run_input: dict[str, Any] | None = None) -> str:
    r = c.post(
        "/v1/runs",
        json={"flow_id": "f1", "tenant_id": tenant, "input": run_input or {}, "flow_definition": dag(tenant, *tasks)},
    )
    assert r.status_code == 202, r.text
    run_id: str = r.json()["run_id"]
    return run_id


def _done(run_id: str) -> Callable[[Any], bool]:
    return lambda e: e.event == "done" and e.json()["request_id"] == run_id


def _tasks(events: list[Any], kind: str) -> list[str]:
    return [e.json()["data"]["task_id"] for e in events if e.event == kind]


def test_ready_tasks_run_in_parallel_and_downstream_reads_upstream_outputs(stack: Stack) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    with stack.client("alice", tenant) as c:
        run_id = _start(
            c,
            tenant,
            task("start", input={"greeting": "{{ input.greeting }}"}),
            task("left", "sleep", ("start",), input={"seconds": 0.4, "side": "L"}),
            task("right", "sleep", ("start",), input={"seconds": 0.4, "side": "R"}),
            task(
                "join",
                "echo",
                ("left", "right"),
                input={
                    "pair": ["{{ tasks.left.output.side }}", "{{ tasks.right.output.side }}"],
                    "text": "{{ tasks.start.output.greeting }}, {{ tasks.left.output.side }}!",
                },
            ),
            run_input={"greeting": "hello"},
        )
        events = read_until(c, f"/v1/runs/{run_id}/stream", _done(run_id))
        kinds = [e.event for e in events]
        assert kinds[0] == "run.started" and kinds[-2:] == ["run.completed", "done"]
        order = [(e.event, e.json()["data"].get("task_id")) for e in events if e.event.startswith("task.")]
        position = {item: i for i, item in enumerate(order)}
        # Both branches start before either finishes: they run at the same time, not one after the other.
        first_branch_done = min(position[("task.completed", "left")], position[("task.completed", "right")])
        assert position[("task.started", "left")] < first_branch_done
        assert position[("task.started", "right")] < first_branch_done
        assert position[("task.completed", "start")] < position[("task.started", "left")]
        assert position[("task.started", "join")] > max(
            position[("task.completed", "left")], position[("task.completed", "right")]
        )
        final = c.get(f"/v1/runs/{run_id}").json()
        assert final["status"] == "COMPLETED"
        assert final["output"]["tasks"]["join"] == {"pair": ["L", "R"], "text": "hello, L!"}
        resumed = read_until(c, f"/v1/runs/{run_id}/stream", _done(run_id), last_event_id=events[-3].id)
        assert [e.event for e in resumed] == ["run.completed", "done"]


def test_task_retries_then_succeeds_and_a_timeout_fails_the_run(stack: Stack) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    with stack.client("alice", tenant) as c:
        flaky = _start(c, tenant, task("flaky", "fail", input={"succeed_on_try": 3}, retries=4))
        events = read_until(c, f"/v1/runs/{flaky}/stream", _done(flaky))
        retrying = [e.json()["data"] for e in events if e.event == "task.retrying"]
        assert [r["try"] for r in retrying] == [2, 3] and "failed on purpose" in retrying[0]["error"]
        assert _tasks(events, "task.completed") == ["flaky"]
        assert c.get(f"/v1/runs/{flaky}").json()["output"]["tasks"]["flaky"] == {"succeeded_on_try": 3}

        slow = _start(
            c,
            tenant,
            task("slow", "sleep", input={"seconds": 30}, retries=1, timeout_seconds=0.3),
            task("after", "echo", ("slow",)),
        )
        events = read_until(c, f"/v1/runs/{slow}/stream", _done(slow))
        assert _tasks(events, "task.retrying") == ["slow"]
        failed = next(e.json()["data"] for e in events if e.event == "task.failed")
        assert failed == {"task_id": "slow", "tries": 2, "error": "timed out after 0.3 s"}
        assert "after" not in _tasks(events, "task.started")
        assert [e.event for e in events][-2:] == ["run.failed", "done"]
        status = c.get(f"/v1/runs/{slow}").json()
        assert status["status"] == "FAILED" and "timed out" in status["error"]


def test_cancel_stops_a_running_flow(stack: Stack) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    with stack.client("alice", tenant) as c:
        run_id = _start(c, tenant, task("long", "sleep", input={"seconds": 30}))
        read_until(c, f"/v1/runs/{run_id}/stream", lambda e: e.event == "task.started")
        assert c.post(f"/v1/runs/{run_id}/cancel").json()["status"] == "CANCELLING"
        events = read_until(c, f"/v1/runs/{run_id}/stream", _done(run_id))
        assert [e.event for e in events][-2:] == ["run.cancelled", "done"]
        assert c.get(f"/v1/runs/{run_id}").json()["status"] == "CANCELLED"


async def _events(gw: Any, run_id: str) -> list[dict[str, Any]]:
    raw = await gw.gateway.streams.xrange(_run_key(gw, run_id))
    return [{"id": i.decode(), **Event.from_fields(f).model_dump()} for i, f in raw]


def _run_key(gw: Any, run_id: str) -> str:
    return run_stream_key(run_id, gw.gateway.settings.stream_buckets)


async def _wait_events(gw: Any, run_id: str, stop: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events = await _events(gw, run_id)
        if stop(events):
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not get there: {[e['type'] for e in await _events(gw, run_id)]}")


def _started(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["task_id"] for e in events if e["type"] == "task.started"]


async def test_worker_killed_mid_flow_resumes_without_repeating_finished_tasks(
    gateway_app: Any,
    stack: Stack,
    chaos_workers: Callable[[], None],
) -> None:
    """The run goes to the `chaos` workers (which only the kill tests use); its worker is killed in `long`."""
    chaos_workers()
    gw = await gateway_app(flow_feature="chaos")
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    async with gw.client("alice", tenant) as c:
        r = await c.post(
            "/v1/runs",
            json={
                "flow_id": "f1",
                "tenant_id": tenant,
                "flow_definition": dag(
                    tenant,
                    task("first", input={"n": 1}),
                    task("long", "sleep", ("first",), input={"seconds": 2}),
                    task("last", "echo", ("long",), input={"from_long": "{{ tasks.long.output.seconds }}"}),
                ),
            },
        )
        run_id = r.json()["run_id"]
        await _wait_events(gw, run_id, lambda evs: "long" in _started(evs))
        os.kill(stack.worker_running(run_id), signal.SIGKILL)
        events = await _wait_events(gw, run_id, lambda evs: evs[-1]["type"] == "done")
        assert _started(events).count("first") == 1
        assert _started(events).count("long") == 2
        retrying = next(e for e in events if e["type"] == "run.retrying")
        assert retrying["attempt"] == 2 and retrying["data"]["completed_tasks"] == ["first"]
        assert [e["type"] for e in events][-2:] == ["run.completed", "done"]
        status = (await c.get(f"/v1/runs/{run_id}")).json()
        assert status["status"] == "COMPLETED" and status["attempt"] == 2
        assert status["output"]["tasks"]["last"] == {"from_long": 2}
    history = await gw.gateway.db.fetch(
        "SELECT status FROM flow_run_status_history WHERE run_id = $1 ORDER BY id", run_id
    )
    assert [h["status"] for h in history] == ["PENDING", "RUNNING", "PENDING", "RUNNING", "COMPLETED"]
