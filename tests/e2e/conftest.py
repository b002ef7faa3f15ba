"""Fixtures the end-to-end modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.fake_openai import FakeOpenAI


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    """The fake OpenAI-compatible provider, one per module."""
    with FakeOpenAI() as server:
        yield server
