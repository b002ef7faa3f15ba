"""The process's file-descriptor limit, and how many SSE streams fit under it.

Every SSE stream holds one socket. A process that runs out of descriptors cannot accept a
connection, open a Postgres or Redis connection or a file, so the gateway stops taking new
streams a reserve short of its limit and answers 503 instead.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)


def raise_soft_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one (where the system allows it); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else 2**20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the descriptor limit", extra={"soft": soft, "hard": hard, "error": str(exc)})
        return soft
    return hard


@dataclass(frozen=True)
class StreamCapacity:
    """SSE streams one process may hold: its descriptor limit less a reserve for everything else."""

    limit: int
    reserve: int

    @property
    def max_streams(self) -> int:
        """`limit - reserve`, but never less than half the limit (a reserve larger than that is a typo)."""
        return max(self.limit - self.reserve, self.limit // 2)

    def full(self, open_streams: int) -> bool:
        return open_streams >= self.max_streams


def stream_capacity(reserve: int) -> StreamCapacity:
    """This process's capacity, after raising its soft limit as far as it may go."""
    capacity = StreamCapacity(raise_soft_limit(), reserve)
    log.info(
        "stream capacity",
        extra={"descriptor_limit": capacity.limit, "reserve": reserve, "max_streams": capacity.max_streams},
    )
    return capacity
