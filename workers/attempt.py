"""The running state of one attempt, shared by its job, the worker's flusher and its heartbeat."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from common.requests.models import JobPayload
from common.streams.protocol import Event
from workers.metering import Meter


class Stop(Exception):
    """The attempt must end early: cancelled, or its lease was taken over."""

    def __init__(self, reason: str, *, fenced: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fenced = fenced


@dataclass(eq=False)
class Attempt:
    """Tokens produced (`parts`), tokens not yet written (`pending`, then `unsent` once they are
    events), and why the attempt must stop, if it must."""

    payload: JobPayload
    user_id: str = ""  # whose budgets its usage counts against
    cancel_key: str = ""
    parts: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    unsent: list[Event] = field(default_factory=list)
    last_stream_id: str | None = None
    slot: int = -1  # which phase of the flush tick writes its tokens (workers.flusher)
    due: bool = False  # its first token or a full batch waits: the next flush writes it, whatever the phase
    checkpointed: int = 0
    seq: int = 0
    lost: bool = False
    stop: Stop | None = None
    work: asyncio.Task[None] | None = None
    written: asyncio.Event = field(default_factory=asyncio.Event)
    meter: Meter = field(default_factory=Meter)

    def event(self, type_: str, data: dict[str, Any]) -> Event:
        self.seq += 1
        return Event(
            type=type_,  # type: ignore[arg-type]
            request_id=self.payload.request_id,
            attempt=self.payload.attempt,
            seq=self.seq,
            data=data,
        )

    def halt(self, stop: Stop) -> None:
        """Stop the generation (a cancel flag, a lost lease) at its next await."""
        if self.stop is None:
            self.stop = stop
            if stop.fenced:
                self.lost = True
            if self.work is not None and not self.work.done():
                self.work.cancel()
            self.written.set()

    @property
    def flushed(self) -> bool:
        return not self.pending and not self.unsent
