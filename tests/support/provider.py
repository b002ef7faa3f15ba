"""The fake OpenAI-compatible provider as a fixture (a module may define its own `fake` instead)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.openai_api import FakeOpenAI


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    """The fake OpenAI-compatible provider, one per module."""
    with FakeOpenAI() as server:
        yield server
