"""Python functions a flow task can name as its `type`, registered by name.

Modules listed in `FLOW_FUNCTION_MODULES` are imported at start-up (gateway and workers) so
their `@register("name")` calls run; a few built-ins are always there.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from common.flows.errors import TaskError
from common.flows.model import BUILTIN_TYPES


@dataclass(frozen=True)
class TaskCall:
    """What a function sees of its task: the rendered input and which try this is (1-based)."""

    run_id: str
    task_id: str
    tenant_id: str
    input: dict[str, Any]
    try_number: int


TaskFunction = Callable[[TaskCall], Awaitable[Any]]
_FUNCTIONS: dict[str, TaskFunction] = {}


def register(name: str) -> Callable[[TaskFunction], TaskFunction]:
    if name in BUILTIN_TYPES:
        raise ValueError(f"{name!r} is a built-in task type")

    def add(fn: TaskFunction) -> TaskFunction:
        _FUNCTIONS[name] = fn
        return fn

    return add


def get(name: str) -> TaskFunction | None:
    return _FUNCTIONS.get(name)


def task_types() -> list[str]:
    return [*BUILTIN_TYPES, *_FUNCTIONS]


def load_modules(spec: str) -> None:
    """Import the comma-separated modules of `FLOW_FUNCTION_MODULES`."""
    for name in filter(None, (part.strip() for part in spec.split(","))):
        importlib.import_module(name)


@register("echo")
async def echo(call: TaskCall) -> Any:
    """Returns its input: handy to shape data between tasks."""
    return call.input


@register("sleep")
async def sleep(call: TaskCall) -> Any:
    """Waits `seconds`, then returns its input."""
    await asyncio.sleep(float(call.input.get("seconds", 0)))
    return call.input


class TaskFunctionError(TaskError):
    """A function task failed on purpose; the message is shown in `task.failed`."""


@register("fail")
async def fail(call: TaskCall) -> Any:
    """Fails until try `succeed_on_try` (never, if unset); tests retries."""
    succeed_on = call.input.get("succeed_on_try")
    if succeed_on is not None and call.try_number >= int(succeed_on):
        return {"succeeded_on_try": call.try_number}
    raise TaskFunctionError(str(call.input.get("message", "failed on purpose")))
