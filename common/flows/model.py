"""The flow DAG model and its validation: every problem is reported at once, never just the first."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BUILTIN_TYPES = ("llm", "http", "agent")
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


class FlowInvalid(Exception):
    """The definition is not a valid DAG; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _pydantic_problems(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or 'flow_definition'}: {e['msg']}" for e in exc.errors()]


def _cycle(tasks: list[FlowTask]) -> list[str] | None:
    """One cycle among the tasks (as a list of ids), or None for an acyclic graph."""
    deps = {t.id: [d for d in t.depends_on if d != t.id] for t in tasks}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in deps.get(node, []):
            if dep not in deps:
                continue
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for task in deps:
        if task not in state and (found := visit(task)):
            return found
    return None


def _ancestors(tasks: list[FlowTask], task_id: str) -> set[str]:
    deps = {t.id: t.depends_on for t in tasks}
    seen: set[str] = set()
    todo = list(deps.get(task_id, []))
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(deps.get(current, []))
    return seen


def _references(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield from _REFERENCE.findall(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _loose_tasks(raw: Any) -> list[FlowTask]:
    """The tasks of a definition that failed model validation, as far as their graph can be read."""
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    loose = []
    for item in tasks if isinstance(tasks, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        deps = item.get("depends_on") or []
        loose.append(FlowTask.model_construct(
            id=item["id"], type=str(item.get("type", "")),
            depends_on=[d for d in deps if isinstance(d, str)] if isinstance(deps, list) else [],
            input=item.get("input") if isinstance(item.get("input"), dict) else {}))
    return loose


def _graph_problems(tasks: list[FlowTask], types: set[str]) -> list[str]:
    problems: list[str] = []
    ids = [t.id for t in tasks]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"duplicate task id {dup!r}")
    known = set(ids)
    for task in tasks:
        if task.type not in types:
            problems.append(f"task {task.id!r}: unknown task type {task.type!r} (known: {', '.join(sorted(types))})")
        for dep in task.depends_on:
            if dep == task.id:
                problems.append(f"task {task.id!r} depends on itself")
            elif dep not in known:
                problems.append(f"task {task.id!r} depends on unknown task {dep!r}")
        upstream = _ancestors(tasks, task.id)
        for ref in sorted(set(_references(task.input))):
            if ref not in upstream:
                problems.append(f"task {task.id!r} uses the output of {ref!r}, which is not upstream of it")
    cycle = _cycle(tasks)
    if cycle:
        problems.append(f"cycle: {' -> '.join(cycle)}")
    return problems


def validate_flow(raw: Any, known_types: Iterable[str]) -> FlowDefinition:
    """Parse and check a definition: unknown dependencies, cycles, duplicate ids, unknown task types.

    Field errors and graph errors are reported together, so one answer lists every problem.
    """
    types = set(known_types)
    try:
        flow = FlowDefinition.model_validate(raw)
    except ValidationError as exc:
        raise FlowInvalid(_pydantic_problems(exc) + _graph_problems(_loose_tasks(raw), types)) from None
    problems = _graph_problems(flow.tasks, types)
    if problems:
        raise FlowInvalid(problems)
    return flow
