"""The policy engine and the DAG model as units: policies come from configuration, by interface."""

from __future__ import annotations

from typing import Any

import pytest

from common.flows.model import FlowDefinition, FlowInvalid, FlowTask, validate_flow
from common.flows.policies import (
    FlowPolicy,
    PolicyContext,
    PolicyViolation,
    PostTaskPolicy,
    PreTaskPolicy,
    load_engine,
)
from common.flows.templates import TemplateError, render
from common.platform.settings import Settings


class NoHttpPolicy(FlowPolicy, PreTaskPolicy):
    name = "NoHttpPolicy"

    def evaluate(self, flow: FlowDefinition, ctx: PolicyContext, changes: list[dict[str, Any]]) -> FlowDefinition:
        return flow

    def before_task(self, task: FlowTask, task_input: dict[str, Any], ctx: PolicyContext) -> None:
        if task.type == "http":
            raise PolicyViolation(self.name, "http tasks are not allowed here")


class OutputSizePolicy(PostTaskPolicy):
    name = "OutputSizePolicy"

    def after_task(self, task: FlowTask, output: Any, ctx: PolicyContext) -> None:
        if len(str(output)) > 10:
            raise PolicyViolation(self.name, "output too large")


def _flow(**task: Any) -> FlowDefinition:
    return FlowDefinition(id="f", tenant_id="acme", tasks=[FlowTask(id="a", type="echo", **task)])


def test_policies_are_loaded_from_configuration_by_interface() -> None:
    settings = Settings(
        flow_policies="common.flows.policies:RetryLimitPolicy,"
        "tests.flows.test_policies:NoHttpPolicy,tests.flows.test_policies:OutputSizePolicy"
    )
    engine = load_engine(settings)
    assert [p.name for p in engine.flow] == ["RetryLimitPolicy", "NoHttpPolicy"]
    assert [p.name for p in engine.pre_task] == ["NoHttpPolicy"]
    assert [p.name for p in engine.post_task] == ["OutputSizePolicy"]
    ctx = PolicyContext("acme", "alice", settings)
    with pytest.raises(PolicyViolation, match="NoHttpPolicy: http tasks are not allowed"):
        engine.pre_task[0].before_task(FlowTask(id="x", type="http"), {}, ctx)
    evaluated = engine.evaluate(_flow(retries=12), ctx)
    assert evaluated.flow.tasks[0].retries == 10
    assert evaluated.changes == [
        {"policy": "RetryLimitPolicy", "task_id": "a", "field": "retries", "from": 12, "to": 10}
    ]


def test_retry_limit_can_refuse_instead_of_clamping() -> None:
    settings = Settings(flow_retry_limit_action="deny", flow_max_retries=2)
    engine = load_engine(settings)
    with pytest.raises(PolicyViolation, match="RetryLimitPolicy: tasks a retry more than 2 times"):
        engine.evaluate(_flow(retries=3), PolicyContext("acme", "alice", settings))
    with pytest.raises(PolicyViolation, match="TenantIsolationPolicy"):
        engine.evaluate(_flow(), PolicyContext("other", "alice", settings))


def test_validation_reports_every_problem() -> None:
    with pytest.raises(FlowInvalid) as caught:
        validate_flow(
            {
                "id": "f",
                "tenant_id": "t",
                "type": "DAG",
                "tasks": [
                    {"id": "a", "type": "echo", "depends_on": ["a"]},
                    {"id": "b", "type": "echo", "retries": -1, "timeout_seconds": 0},
                ],
            },
            ["echo"],
        )
    assert caught.value.problems == [
        "tasks.1.retries: Input should be greater than or equal to 0",
        "tasks.1.timeout_seconds: Input should be greater than 0",
        "task 'a' depends on itself",
    ]


def test_templates_keep_types_and_fail_on_missing_paths() -> None:
    scope = {"input": {"n": 3, "items": ["x", "y"]}, "tasks": {"a": {"output": {"ok": True}}}}
    assert render(
        {"n": "{{ input.n }}", "s": "n={{ input.n }} {{ input.items.1 }}", "ok": "{{tasks.a.output.ok}}"}, scope, 1024
    ) == {"n": 3, "s": "n=3 y", "ok": True}
    with pytest.raises(TemplateError):
        render("{{ input.missing }}", scope, 1024)
