"""How deeply flow JSON may nest: stored and rendered values must stay well within the 254 levels orjson writes.

A run input is built from a webhook payload placed into an input mapping, and task inputs from
run inputs placed into task templates, so each part gets a quarter of what storage allows.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator

MAX_JSON_DEPTH = 64


def depth(value: Any) -> int:
    """Levels of objects and arrays in `value` (0 for a scalar), walked without recursion."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        todo.extend((child, level + 1) for child in children)
    return deepest


def too_deep(value: Any) -> str | None:
    """Why `value` nests too deeply, or None."""
    levels = depth(value)
    return f"nested {levels} levels deep; at most {MAX_JSON_DEPTH} are allowed" if levels > MAX_JSON_DEPTH else None


def _shallow(value: dict[str, Any]) -> dict[str, Any]:
    problem = too_deep(value)
    if problem:
        raise ValueError(problem)
    return value


ShallowObject = Annotated[dict[str, Any], AfterValidator(_shallow)]
