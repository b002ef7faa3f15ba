"""Bounded flow definitions and renders: caps answered with 400 before anything runs, never a 500 or a stall."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
import uuid
from typing import Any

import pytest

from common.flows import model
from common.flows.model import FlowCaps, FlowInvalid, validate_flow
from common.flows.templates import RenderTooLarge, render
from tests.flows.conftest import dag, task
from tests.flows.test_webhooks import _signed


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def _chain(tenant: str, length: int, *, closed: bool = False) -> dict[str, Any]:
    """t0 <- t1 <- ... listed last task first, so a recursive walk would go `length` frames deep."""
    tasks = [task(f"t{i}", depends_on=(f"t{i - 1}",) if i else ()) for i in range(length)]
    if closed:
        tasks[0]["depends_on"] = [f"t{length - 1}"]
    return dag(tenant, *reversed(tasks))


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def test_a_long_chain_validates_without_recursion_and_a_long_cycle_is_reported_briefly() -> None:
    caps = FlowCaps(max_tasks=2000, max_dependencies=100)
    flow = validate_flow(_chain("acme", 1500), ["echo"], caps)
    assert len(flow.tasks) == 1500
    with pytest.raises(FlowInvalid) as caught:
        validate_flow(_chain("acme", 1500, closed=True), ["echo"], caps)
    [cycle] = caught.value.problems
    assert cycle.startswith("cycle: ") and cycle.endswith("(1500 tasks)") and len(cycle) < 200


def test_references_are_checked_against_what_is_upstream_only() -> None:
    flow = dag(
        "acme",
        task("a"),
        task("b", depends_on=("a",)),
        task("c", depends_on=("b",), input={"x": ["{{ tasks.a.output }}", {"y": "{{ tasks.d.output.z }}"}]}),
        task("d"),
    )
    with pytest.raises(FlowInvalid) as caught:
        validate_flow(flow, ["echo"])
    assert caught.value.problems == ["task 'c' uses the output of 'd', which is not upstream of it"]


async def test_caps_on_tasks_dependencies_and_depth_are_400_before_anything_runs(gateway_app: Any) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    tenant = _tenant()
    async with gw.client("alice", tenant) as c:
        chain = await c.post(
            "/v1/runs", json={"flow_id": "f1", "tenant_id": tenant, "flow_definition": _chain(tenant, 1500)}
        )
        assert chain.status_code == 400, chain.text
        assert chain.json()["detail"] == ["tasks: the flow has 1500 tasks; at most 500 are allowed (FLOW_MAX_TASKS)"]
        fan_in = dag(
            tenant, *[task(f"s{i}") for i in range(101)], task("join", depends_on=tuple(f"s{i}" for i in range(101)))
        )
        wide = await c.post("/v1/flows", json={"definition": fan_in})
        assert wide.status_code == 400
        assert wide.json()["detail"] == [
            "tasks.101.depends_on: 101 dependencies; at most 100 are allowed (FLOW_MAX_DEPENDENCIES)"
        ]
        deep_task = await c.post(
            "/v1/runs",
            json={"flow_id": "f1", "tenant_id": tenant, "flow_definition": dag(tenant, task("a", input=_nested(300)))},
        )
        assert deep_task.status_code == 400
        [problem] = deep_task.json()["detail"]
        assert problem.startswith("flow_definition: nested 30") and problem.endswith("at most 64 are allowed")
        deep_input = await c.post(
            "/v1/runs",
            json={
                "flow_id": "f1",
                "tenant_id": tenant,
                "input": _nested(300),
                "flow_definition": dag(tenant, task("a")),
            },
        )
        assert deep_input.status_code == 400
        assert deep_input.json()["detail"][0]["field"] == "body.input"
        deep_mapping = await c.post("/v1/webhook-configs", json={"flow_id": "f1", "input_mapping": _nested(300)})
        assert deep_mapping.status_code == 400
    runs = await gw.gateway.db.fetchval("SELECT count(*) FROM flow_runs_audit WHERE tenant_id = $1", tenant)
    assert runs == 0


async def test_a_long_chain_under_a_raised_cap_is_accepted(gateway_app: Any) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}", flow_max_tasks=2000)
    tenant = _tenant()
    async with gw.client("alice", tenant) as c:
        r = await c.post(
            "/v1/runs", json={"flow_id": "f1", "tenant_id": tenant, "flow_definition": _chain(tenant, 1500)}
        )
        assert r.status_code == 202, r.text
        cycle = await c.post("/v1/flows", json={"definition": _chain(tenant, 1500, closed=True)})
        assert cycle.status_code == 400 and cycle.json()["detail"][0].startswith("cycle: ")


async def test_health_answers_while_a_large_flow_is_validated(
    gateway_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation is held inside until /health has answered: on the event loop, /health could not answer."""
    inside, release = threading.Event(), threading.Event()
    outcome: dict[str, bool] = {}
    real = model.validate_flow

    def held(raw: Any, known_types: Any, caps: FlowCaps | None = None) -> Any:
        inside.set()
        outcome["released"] = release.wait(timeout=15)
        return real(raw, known_types, caps)

    monkeypatch.setattr("api.flows.service.validate_flow", held)
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    tenant = _tenant()
    async with gw.client("alice", tenant) as c:
        large = _chain(tenant, 500)
        posting = asyncio.create_task(
            c.post("/v1/runs", json={"flow_id": "f1", "tenant_id": tenant, "flow_definition": large})
        )
        assert await asyncio.to_thread(inside.wait, 30)
        health = await c.get("/health")
        in_flight = not posting.done()
        release.set()
        accepted = await posting
    assert health.status_code == 200
    assert in_flight and outcome["released"]
    assert accepted.status_code == 202, accepted.text


def test_a_template_bomb_stops_at_the_cap_without_building_the_result() -> None:
    scope = {"input": {"x": "A" * 50_000, "obj": {"k": ["v" * 100] * 100}}, "tasks": {}}
    repeated = {"t": "{{ input.x }}" * 2_000}  # 100 MB if it were built
    placed = {"list": ["{{ input.obj }}"] * 20_000}  # ~200 MB once written out
    for template in (repeated, placed):
        tracemalloc.start()
        try:
            with pytest.raises(RenderTooLarge, match=r"larger than 1048576 bytes \(FLOW_MAX_RENDER_BYTES\)"):
                render(template, scope, 1024 * 1024)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 8 * 1024 * 1024
    assert render({"t": "{{ input.x }}" * 2}, scope, 1024 * 1024) == {"t": "A" * 100_000}


async def test_a_webhook_input_mapping_bomb_is_400(gateway_app: Any) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    tenant = _tenant()
    async with gw.client("alice", tenant) as c:
        await c.post("/v1/flows", json={"definition": dag(tenant, task("a"), flow_id="hook")})
        config = (
            await c.post(
                "/v1/webhook-configs",
                json={"flow_id": "hook", "input_mapping": {"copies": ["{{ payload.blob }}"] * 2_000}},
            )
        ).json()
        raw, headers = _signed(config["secret"], {"payload": {"blob": "B" * 100_000}})
        r = await c.post(f"/v1/webhooks/{config['webhook_id']}", content=raw, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["detail"] == (
            "input mapping: the rendered input is larger than 1048576 bytes (FLOW_MAX_RENDER_BYTES)"
        )
        deep_raw, deep_headers = _signed(config["secret"], {"payload": _nested(200)})
        deep = await c.post(f"/v1/webhooks/{config['webhook_id']}", content=deep_raw, headers=deep_headers)
        assert deep.status_code == 400, deep.text
