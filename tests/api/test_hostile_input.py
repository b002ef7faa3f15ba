"""Hostile request bodies get a clear 4xx, never a 500: JSON nested far deeper than any real body."""

from __future__ import annotations

from typing import Any

import pytest

from common.requests.models import MAX_JSON_DEPTH
from tests.support.app import App


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for n in range(depth):
        value = {"k": value} if n % 2 else [value]
    return value


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/requests/web", {"content": "hi", "metadata": {"deep": nested(300)}}),
        ("/api/v1/requests/generic", {"content": "hi", "integration_type": "web", "metadata": nested(300)}),
        ("/api/v1/requests/tool", {"content": "hi", "tool_id": "t", "trigger_event": "e", "tool_context": nested(300)}),
        ("/api/v1/sessions", {"user_context": nested(300)}),
    ],
)
async def test_deep_nesting_is_a_422(app: App, path: str, body: dict[str, Any]) -> None:
    async with app.client() as c:
        response = await c.post(path, json=body)
    assert response.status_code == 422, response.text
    assert f"at most {MAX_JSON_DEPTH} levels" in response.text


async def test_nesting_within_the_cap_is_accepted(app: App) -> None:
    async with app.client() as c:
        response = await c.post(
            "/api/v1/requests/web", json={"content": "hi", "metadata": {"deep": nested(MAX_JSON_DEPTH - 3)}}
        )
    assert response.status_code == 202, response.text
