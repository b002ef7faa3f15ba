"""The executor's bounds, run in-process on the real Postgres and Valkey: fan-out, renders, outputs, run time,
admission of llm and agent tasks, and task errors as clients read them."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from common.flows.errors import public_message, scrub
from common.streams.protocol import Event
from tests.flows.conftest import Executor, start_run, task
from tests.flows.task_functions import SECRET_PATH
from workers import model

FUNCTIONS = "tests.flows.task_functions"


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def _failed(events: list[Event]) -> dict[str, Any]:
    return next(e.data for e in events if e.type == "task.failed")


async def _gateway(gateway_app: Any, **overrides: Any) -> Any:
    """A gateway whose runs no worker takes: each test executes them itself."""
    return await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}", **overrides)


async def test_fan_out_runs_at_most_flow_max_parallel_tasks_at_once(gateway_app: Any, executor: Any) -> None:
    gw = await _gateway(gateway_app)
    ex: Executor = await executor(flow_max_parallel=2)
    tenant = _tenant()
    async with gw.client("alice", tenant) as c:
        branches = [task(f"b{i}", "sleep", input={"seconds": 0.2}) for i in range(6)]
        run_id = await start_run(c, tenant, *branches, task("join", depends_on=tuple(b["id"] for b in branches)))
        assert await ex.run(run_id, tenant) == "completed"
    running, most = 0, 0
    for event in await ex.events(run_id):
        running += {"task.started": 1, "task.completed": -1}.get(event.type, 0)
        most = max(most, running)
    assert most == 2


async def test_renders_and_outputs_over_their_caps_fail_the_task_without_retrying(
    gateway_app: Any, executor: Any
) -> None:
    gw = await _gateway(gateway_app)
    ex: Executor = await executor(
        flow_max_render_bytes=64 * 1024, flow_max_output_bytes=32 * 1024, flow_max_run_output_bytes=64 * 1024
    )
    tenant = _tenant()
    blob = {"x": "A" * 20_000}
    async with gw.client("alice", tenant) as c:
        bomb = await start_run(c, tenant, task("a", input={"t": "{{ input.x }}" * 4}, retries=3), run_input=blob)
        too_big = await start_run(
            c, tenant, task("a", input={"t": "{{ input.x }}{{ input.x }}"}, retries=3), run_input=blob
        )
        too_many = await start_run(
            c,
            tenant,
            *[task(f"t{i}", depends_on=(f"t{i - 1}",) if i else (), input={"t": "{{ input.x }}"}) for i in range(4)],
            run_input=blob,
        )
        for run_id in (bomb, too_big, too_many):
            assert await ex.run(run_id, tenant) == "failed"
        assert _failed(await ex.events(bomb)) == {
            "task_id": "a",
            "tries": 1,
            "error": "RenderTooLarge: the rendered input is larger than 65536 bytes (FLOW_MAX_RENDER_BYTES)",
        }
        assert _failed(await ex.events(too_big)) == {
            "task_id": "a",
            "tries": 1,
            "error": "OutputTooLarge: the task's output is 40008 bytes; at most 32768 are allowed"
            " (FLOW_MAX_OUTPUT_BYTES)",
        }
        events = await ex.events(too_many)
        assert [e.data["task_id"] for e in events if e.type == "task.completed"] == ["t0", "t1", "t2"]
        assert _failed(events) == {
            "task_id": "t3",
            "tries": 1,
            "error": "OutputTooLarge: the run's outputs would be 80032 bytes; at most 65536 are allowed"
            " (FLOW_MAX_RUN_OUTPUT_BYTES)",
        }
        status = (await c.get(f"/v1/runs/{too_many}")).json()
        assert status["status"] == "FAILED" and "FLOW_MAX_RUN_OUTPUT_BYTES" in status["error"]


async def test_a_run_past_flow_timeout_seconds_fails_clearly(gateway_app: Any, executor: Any) -> None:
    gw = await _gateway(gateway_app)
    ex: Executor = await executor(flow_timeout_seconds=1)
    tenant = _tenant()
    async with gw.client("alice", tenant) as c:
        run_id = await start_run(c, tenant, task("slow", "sleep", input={"seconds": 600}, timeout_seconds=900))
        assert await ex.run(run_id, tenant) == "failed"
        events = await ex.events(run_id)
        assert [e.type for e in events][-2:] == ["run.failed", "done"]
        assert events[-2].data == {"error": "the run took longer than 1 s (FLOW_TIMEOUT_SECONDS)"}
        status = (await c.get(f"/v1/runs/{run_id}")).json()
        assert status["status"] == "FAILED" and status["error"] == "the run took longer than 1 s (FLOW_TIMEOUT_SECONDS)"


async def test_llm_and_agent_tasks_count_against_the_user_rate(gateway_app: Any, executor: Any) -> None:
    gw = await _gateway(gateway_app, rate_limit_user_per_minute=0)
    ex: Executor = await executor(rate_limit_user_per_minute=2, offline_model_tokens_per_second=1000)
    model.configure()
    tenant = _tenant()
    async with gw.client("alice", tenant) as c:
        run_id = await start_run(
            c,
            tenant,
            task("a", "llm", input={"prompt": "one"}),
            task("b", "llm", ("a",), input={"prompt": "two"}),
            task("c", "agent", ("b",), input={"content": "three"}),
        )
        assert await ex.run(run_id, tenant) == "failed"
        events = await ex.events(run_id)
        assert [e.data["task_id"] for e in events if e.type == "task.completed"] == ["a", "b"]
        assert _failed(events) == {
            "task_id": "c",
            "tries": 1,
            "error": "RateLimited: user_requests_per_minute: more than 2 requests a minute",
        }
        assert not await gw.gateway.db.fetchval("SELECT count(*) FROM request_logs WHERE tenant_id = $1", tenant)
        again = await start_run(c, tenant, task("a", "llm", input={"prompt": "four"}))
        assert await ex.run(again, tenant) == "failed"
        assert "user_requests_per_minute" in _failed(await ex.events(again))["error"]


async def test_an_agent_task_counts_as_a_running_request_of_the_runs_user(gateway_app: Any, executor: Any) -> None:
    gw = await _gateway(gateway_app, max_running_requests_per_user=1)
    ex: Executor = await executor(max_running_requests_per_user=1)
    tenant = _tenant()
    async with gw.client("alice", tenant) as c:
        run_id = await start_run(c, tenant, task("ask", "agent", input={"content": "hello"}))
        assert await ex.run(run_id, tenant) == "failed"
        assert _failed(await ex.events(run_id))["error"] == (
            "RateLimited: running_requests_per_user: 1 requests are still queued or running"
        )


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_task_errors_reach_clients_as_one_clean_line(gateway_app: Any, executor: Any) -> None:
    gw = await _gateway(gateway_app, flow_function_modules=FUNCTIONS)
    ex: Executor = await executor(flow_function_modules=FUNCTIONS)
    tenant = _tenant()
    worker_log = _Records()
    logging.getLogger("workers.flows").addHandler(worker_log)
    async with gw.client("alice", tenant) as c:
        leaky = await start_run(c, tenant, task("read", "leaky", retries=1))
        chatty = await start_run(c, tenant, task("talk", "chatty"))
        try:
            for run_id in (leaky, chatty):
                assert await ex.run(run_id, tenant) == "failed"
        finally:
            logging.getLogger("workers.flows").removeHandler(worker_log)
        statuses = {run_id: (await c.get(f"/v1/runs/{run_id}")).json() for run_id in (leaky, chatty)}
        listed = (await c.get("/v1/runs")).text
    leaky_events = await ex.events(leaky)
    assert next(e.data for e in leaky_events if e.type == "task.retrying")["error"] == _failed(leaky_events)["error"]
    assert _failed(leaky_events)["error"] == (
        "FileNotFoundError: unexpected error in the task (details are in the worker log)"
    )
    assert statuses[leaky]["error"] == (
        "task 'read' failed: FileNotFoundError: unexpected error in the task (details are in the worker log)"
    )
    assert _failed(await ex.events(chatty))["error"] == "TaskFunctionError: lookup failed"
    assert statuses[chatty]["error"] == "task 'talk' failed: TaskFunctionError: lookup failed"
    streamed = [str(e.data) for run_id in (leaky, chatty) for e in await ex.events(run_id)]
    for text in [listed, *streamed]:
        assert SECRET_PATH not in text and "Traceback" not in text and ".py" not in text
    logged = [r for r in worker_log.records if r.getMessage() == "flow task raised" and r.exc_info]
    assert logged and SECRET_PATH in str(logged[0].exc_info[1]) and logged[0].exc_info[2] is not None


def test_scrub_leaves_one_short_line_without_frames_or_source_paths() -> None:
    text = (
        'bad input\n  File "/app/workers/flows.py", line 12, in _call\n at /usr/lib/python3.11/site-packages/x/y.py'
        " for /tickets/T-7 " + "z" * 400
    )
    line = scrub(text)
    assert "\n" not in line and len(line) == 300 and line.endswith("…")
    assert line.startswith("bad input at <path> for /tickets/T-7 zzz")
    assert public_message(KeyError("/etc/passwd")) == (
        "KeyError: unexpected error in the task (details are in the worker log)"
    )
