"""The policy engine: classes named in `FLOW_POLICIES` judge (and may amend) every run.

`FlowPolicy` runs when a run is created (a violation answers 403 naming the policy; a
modification is applied and recorded in the audit row); `PreTaskPolicy` and
`PostTaskPolicy` run in the executor around each task (a violation fails the task).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from common.flows import functions
from common.flows.model import FlowDefinition, FlowTask
from common.platform.settings import Settings


@dataclass(frozen=True)
class PolicyContext:
    tenant_id: str
    user_id: str
    settings: Settings


class PolicyViolation(Exception):
    def __init__(self, policy: str, message: str) -> None:
        super().__init__(f"{policy}: {message}")
        self.policy = policy
        self.message = message


@dataclass
class Evaluation:
    """The flow as the policies left it, and every change they made."""

    flow: FlowDefinition
    changes: list[dict[str, Any]] = field(default_factory=list)


class Policy:
    name = "Policy"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings


class FlowPolicy(Policy):
    def evaluate(self, flow: FlowDefinition, ctx: PolicyContext, changes: list[dict[str, Any]]) -> FlowDefinition:
        """Return the flow (possibly amended, appending to `changes`) or raise PolicyViolation."""
        raise NotImplementedError


class PreTaskPolicy(Policy):
    def before_task(self, task: FlowTask, task_input: dict[str, Any], ctx: PolicyContext) -> None:
        raise NotImplementedError


class PostTaskPolicy(Policy):
    def after_task(self, task: FlowTask, output: Any, ctx: PolicyContext) -> None:
        raise NotImplementedError


class TenantIsolationPolicy(FlowPolicy):
    name = "TenantIsolationPolicy"

    def evaluate(self, flow: FlowDefinition, ctx: PolicyContext, changes: list[dict[str, Any]]) -> FlowDefinition:
        if flow.tenant_id != ctx.tenant_id:
            raise PolicyViolation(self.name, f"flow belongs to tenant {flow.tenant_id!r}, not {ctx.tenant_id!r}")
        return flow


class RetryLimitPolicy(FlowPolicy):
    """Tasks may retry at most `FLOW_MAX_RETRIES` times: clamped (recorded) or refused."""

    name = "RetryLimitPolicy"

    def evaluate(self, flow: FlowDefinition, ctx: PolicyContext, changes: list[dict[str, Any]]) -> FlowDefinition:
        limit = self.settings.flow_max_retries
        over = [t for t in flow.tasks if t.retries > limit]
        if not over:
            return flow
        if self.settings.flow_retry_limit_action != "clamp":
            ids = ", ".join(t.id for t in over)
            raise PolicyViolation(self.name, f"tasks {ids} retry more than {limit} times")
        tasks = []
        for task in flow.tasks:
            if task.retries > limit:
                changes.append(
                    {"policy": self.name, "task_id": task.id, "field": "retries", "from": task.retries, "to": limit}
                )
                task = task.model_copy(update={"retries": limit})
            tasks.append(task)
        return flow.model_copy(update={"tasks": tasks})


class TimeoutLimitPolicy(FlowPolicy):
    """No task may run longer than `FLOW_MAX_TIMEOUT_SECONDS` (default 2 h)."""

    name = "TimeoutLimitPolicy"

    def evaluate(self, flow: FlowDefinition, ctx: PolicyContext, changes: list[dict[str, Any]]) -> FlowDefinition:
        limit = self.settings.flow_max_timeout_seconds
        over = [t.id for t in flow.tasks if t.timeout_seconds > limit]
        if over:
            raise PolicyViolation(self.name, f"tasks {', '.join(over)} exceed the {limit} s timeout limit")
        return flow


@dataclass
class PolicyEngine:
    flow: list[FlowPolicy]
    pre_task: list[PreTaskPolicy]
    post_task: list[PostTaskPolicy]

    def evaluate(self, flow: FlowDefinition, ctx: PolicyContext) -> Evaluation:
        changes: list[dict[str, Any]] = []
        for policy in self.flow:
            flow = policy.evaluate(flow, ctx, changes)
        return Evaluation(flow, changes)


def load_engine(settings: Settings) -> PolicyEngine:
    """Instantiate every `module:Class` named in `FLOW_POLICIES`, sorted by the interface it implements."""
    engine = PolicyEngine([], [], [])
    for spec in filter(None, (part.strip() for part in settings.flow_policies.split(","))):
        module, _, attr = spec.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        policy = cls(settings)
        if isinstance(policy, FlowPolicy):
            engine.flow.append(policy)
        if isinstance(policy, PreTaskPolicy):
            engine.pre_task.append(policy)
        if isinstance(policy, PostTaskPolicy):
            engine.post_task.append(policy)
    return engine


_ENGINES: dict[int, PolicyEngine] = {}


def configured_engine(settings: Settings) -> PolicyEngine:
    """The policies of `FLOW_POLICIES` (and the task functions of `FLOW_FUNCTION_MODULES`), loaded once per process."""
    key = id(settings)
    if key not in _ENGINES:
        functions.load_modules(settings.flow_function_modules)
        _ENGINES[key] = load_engine(settings)
    return _ENGINES[key]
