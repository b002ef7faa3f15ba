"""Streams one process may hold under its descriptor limit."""

from __future__ import annotations

import resource

from api.streams.capacity import StreamCapacity, raise_soft_limit


def test_capacity_keeps_the_reserve() -> None:
    capacity = StreamCapacity(limit=20_000, reserve=1_000)
    assert capacity.max_streams == 19_000
    assert not capacity.full(18_999)
    assert capacity.full(19_000)


def test_a_reserve_larger_than_half_the_limit_still_leaves_half_for_streams() -> None:
    assert StreamCapacity(limit=1_024, reserve=1_000).max_streams == 512


def test_soft_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        assert raise_soft_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == (hard if hard != resource.RLIM_INFINITY else 256)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
