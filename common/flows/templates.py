"""`{{ input.x }}` and `{{ tasks.A.output.y }}` placeholders in task inputs, resolved against the run.

Every render is bounded: the size of what it produces is counted piece by piece as it is built,
so a template that repeats a large value stops at the cap instead of filling memory first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from common.flows.errors import FinalTaskError, TaskError

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
_SCALAR_BYTES = 8


class TemplateError(TaskError):
    pass


class RenderTooLarge(TemplateError, FinalTaskError):
    """The rendered value would be larger than the cap."""


def lookup(scope: dict[str, Any], path: str) -> Any:
    value: Any = scope
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"{{{{ {path} }}}} does not resolve")
    return value


@dataclass
class _Budget:
    """What one render may still produce (approximate JSON bytes), and the text of values it has sized."""

    limit: int
    left: int = 0
    texts: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.left = self.limit

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise RenderTooLarge(f"the rendered input is larger than {self.limit} bytes (FLOW_MAX_RENDER_BYTES)")

    def text(self, value: Any) -> str:
        """`value` as text (JSON unless a string), computed once per value however often it is referenced."""
        if isinstance(value, str):
            return value
        key = id(value)
        if key not in self.texts:
            try:
                self.texts[key] = orjson.dumps(value).decode()
            except orjson.JSONEncodeError:
                raise TemplateError("a referenced value is nested too deeply to be written as text") from None
        return self.texts[key]

    def whole(self, value: Any) -> Any:
        """A value placed as it is: it counts for its full size wherever it is placed."""
        if isinstance(value, dict | list):
            self.spend(len(self.text(value)))
        elif isinstance(value, str):
            self.spend(len(value) + 2)
        else:
            self.spend(_SCALAR_BYTES)
        return value


def render(value: Any, scope: dict[str, Any], max_bytes: int) -> Any:
    """A string that is one placeholder keeps the referenced value's type; others become text.

    Raises RenderTooLarge as soon as the result would exceed `max_bytes`, and TemplateError
    for a placeholder that does not resolve.
    """
    return _render(value, scope, _Budget(max_bytes))


def _render(value: Any, scope: dict[str, Any], budget: _Budget) -> Any:
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value.strip())
        if whole:
            return budget.whole(lookup(scope, whole.group(1)))
        budget.spend(len(value) + 2)

        def substitute(match: re.Match[str]) -> str:
            text = budget.text(lookup(scope, match.group(1)))
            budget.spend(len(text))
            return text

        return _PLACEHOLDER.sub(substitute, value)
    if isinstance(value, dict):
        rendered = {}
        for key, item in value.items():
            budget.spend(len(key) + 3)
            rendered[key] = _render(item, scope, budget)
        return rendered
    if isinstance(value, list):
        return [_render(item, scope, budget) for item in value]
    budget.spend(_SCALAR_BYTES)
    return value
