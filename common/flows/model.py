"""The flow DAG model and its validation: every problem is reported at once, never just the first."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.flows.depth import too_deep
from common.platform.settings import Settings

BUILTIN_TYPES = ("llm", "http", "agent")
MAX_PROBLEMS = 100
MAX_CYCLE_SHOWN = 10
_REFERENCE = re.compile(r"\{\{\s*tasks\.([A-Za-z0-9_.-]+?)\.output\b")


class FlowTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    type: str = Field(min_length=1, max_length=128)
    depends_on: list[str] = Field(default_factory=list)
    input: dict[str, Any] = Field(default_factory=dict)
    retries: int = Field(default=0, ge=0)
    timeout_seconds: float = Field(default=300, gt=0)


class FlowDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=255)
    version: str = Field(default="1", max_length=64)
    type: Literal["DAG"] = "DAG"
    tenant_id: str = Field(min_length=1, max_length=255)
    tasks: list[FlowTask] = Field(min_length=1)

    def task(self, task_id: str) -> FlowTask:
        return next(t for t in self.tasks if t.id == task_id)


@dataclass(frozen=True)
class FlowCaps:
    """`FLOW_MAX_TASKS` and `FLOW_MAX_DEPENDENCIES` (per task)."""

    max_tasks: int = 500
    max_dependencies: int = 100

    @classmethod
    def of(cls, settings: Settings) -> FlowCaps:
        return cls(settings.flow_max_tasks, settings.flow_max_dependencies)


class FlowInvalid(Exception):
    """The definition is not a valid DAG; `problems` lists every reason (the first MAX_PROBLEMS of them)."""

    def __init__(self, problems: list[str]) -> None:
        if len(problems) > MAX_PROBLEMS:
            problems = [*problems[:MAX_PROBLEMS], f"… and {len(problems) - MAX_PROBLEMS} more problems"]
        super().__init__("; ".join(problems))
        self.problems = problems


def _pydantic_problems(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or 'flow_definition'}: {e['msg']}" for e in exc.errors()]


def _graph(tasks: list[FlowTask]) -> tuple[dict[str, list[str]], list[str]]:
    """Each id's known dependencies (itself left out) and the ids in an order where dependencies come first.

    Kahn's algorithm, iterative: a chain of any length needs no recursion. Ids on or downstream
    of a cycle are left out of the order.
    """
    deps = {t.id: [d for d in dict.fromkeys(t.depends_on) if d != t.id] for t in tasks}
    deps = {task_id: [d for d in ds if d in deps] for task_id, ds in deps.items()}
    waiting = {task_id: len(ds) for task_id, ds in deps.items()}
    dependents: dict[str, list[str]] = {task_id: [] for task_id in deps}
    for task_id, ds in deps.items():
        for dep in ds:
            dependents[dep].append(task_id)
    order = [task_id for task_id, count in waiting.items() if count == 0]
    for task_id in order:  # grows while it is walked
        for child in dependents[task_id]:
            waiting[child] -= 1
            if waiting[child] == 0:
                order.append(child)
    return deps, order


def _cycle(deps: dict[str, list[str]], ordered: set[str]) -> list[str] | None:
    """One cycle (as a list of ids) among the ids Kahn's algorithm could not order, or None."""
    left = [task_id for task_id in deps if task_id not in ordered]
    if not left:
        return None
    # Every id left waits on another id left, so following those leads round a cycle.
    path: list[str] = []
    seen: dict[str, int] = {}
    node = left[0]
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(d for d in deps[node] if d not in ordered)
    return [*path[seen[node] :], node]


def _upstream(deps: dict[str, list[str]], order: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Each ordered id's upstream ids as a bit set (an int, bit i for `order[i]`), built in dependency order."""
    index = {task_id: i for i, task_id in enumerate(order)}
    bits: dict[str, int] = {}
    for task_id in order:
        mask = 0
        for dep in deps[task_id]:
            mask |= bits[dep] | (1 << index[dep])
        bits[task_id] = mask
    return bits, index


def _references(value: Any) -> Iterable[str]:
    """The task ids a task input's placeholders read the output of (walked without recursion)."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            yield from _REFERENCE.findall(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)


def _loose_tasks(raw: Any) -> list[FlowTask]:
    """The tasks of a definition that failed model validation, as far as their graph can be read."""
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    loose = []
    for item in tasks if isinstance(tasks, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        deps = item.get("depends_on") or []
        loose.append(
            FlowTask.model_construct(
                id=item["id"],
                type=str(item.get("type", "")),
                depends_on=[d for d in deps if isinstance(d, str)] if isinstance(deps, list) else [],
                input=item.get("input") if isinstance(item.get("input"), dict) else {},
            )
        )
    return loose


def _graph_problems(tasks: list[FlowTask], types: set[str]) -> list[str]:
    """Duplicate ids, unknown types and dependencies, references to tasks not upstream, a cycle.

    Linear in tasks plus dependencies (the upstream check: one bit-set OR per dependency).
    References of tasks on or downstream of a cycle are not checked: the cycle is reported.
    """
    problems: list[str] = []
    counts = Counter(t.id for t in tasks)
    for dup in sorted(i for i, n in counts.items() if n > 1):
        problems.append(f"duplicate task id {dup!r}")
    deps, order = _graph(tasks)
    bits, index = _upstream(deps, order)
    for task in tasks:
        if task.type not in types:
            problems.append(f"task {task.id!r}: unknown task type {task.type!r} (known: {', '.join(sorted(types))})")
        for dep in task.depends_on:
            if dep == task.id:
                problems.append(f"task {task.id!r} depends on itself")
            elif dep not in counts:
                problems.append(f"task {task.id!r} depends on unknown task {dep!r}")
        if task.id not in bits:
            continue
        for ref in sorted(set(_references(task.input))):
            if ref not in index or not bits[task.id] >> index[ref] & 1:
                problems.append(f"task {task.id!r} uses the output of {ref!r}, which is not upstream of it")
    cycle = _cycle(deps, set(order))
    if cycle:
        shown = cycle if len(cycle) <= MAX_CYCLE_SHOWN else [*cycle[:MAX_CYCLE_SHOWN], f"… ({len(cycle) - 1} tasks)"]
        problems.append(f"cycle: {' -> '.join(shown)}")
    return problems


def _cap_problems(raw: Any, caps: FlowCaps) -> list[str]:
    """Tasks and dependencies over the caps, read from the raw definition before anything else is."""
    deep = too_deep(raw)
    if deep:
        return [f"flow_definition: {deep}"]
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    if not isinstance(tasks, list):
        return []
    if len(tasks) > caps.max_tasks:
        return [f"tasks: the flow has {len(tasks)} tasks; at most {caps.max_tasks} are allowed (FLOW_MAX_TASKS)"]
    problems = []
    for i, item in enumerate(tasks):
        deps = item.get("depends_on") if isinstance(item, dict) else None
        if isinstance(deps, list) and len(deps) > caps.max_dependencies:
            problems.append(
                f"tasks.{i}.depends_on: {len(deps)} dependencies; at most {caps.max_dependencies}"
                " are allowed (FLOW_MAX_DEPENDENCIES)"
            )
    return problems


def validate_flow(raw: Any, known_types: Iterable[str], caps: FlowCaps | None = None) -> FlowDefinition:
    """Parse and check a definition: unknown dependencies, cycles, duplicate ids, unknown task types.

    Field errors and graph errors are reported together, so one answer lists every problem; a
    definition over the caps is refused on that alone, before it is parsed.
    """
    over = _cap_problems(raw, caps or FlowCaps())
    if over:
        raise FlowInvalid(over)
    types = set(known_types)
    try:
        flow = FlowDefinition.model_validate(raw)
    except ValidationError as exc:
        raise FlowInvalid(_pydantic_problems(exc) + _graph_problems(_loose_tasks(raw), types)) from None
    problems = _graph_problems(flow.tasks, types)
    if problems:
        raise FlowInvalid(problems)
    return flow
