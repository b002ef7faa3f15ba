"""The webhook and SMS receiver the delivery tests of a module share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.http_receiver import Receiver


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()
