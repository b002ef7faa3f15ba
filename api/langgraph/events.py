"""A request's stream entries as LangGraph SSE events (`metadata` first, `end` last), ids kept for resume."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from api.langgraph.messages import ai, ai_id
from api.langgraph.resources import TIMED_OUT
from common.streams.hub import Entry

LgEvent = tuple[str, Any]
HEARTBEAT = b": heartbeat\n\n"


def frames(events: list[LgEvent], entry_id: bytes | None) -> bytes:
    """SSE frames of one entry's events. Only the last carries the entry's id: a client cut between
    them resumes before the entry and gets all of them again, never a gap."""
    out = []
    for n, (name, data) in enumerate(events):
        frame = b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data, default=str) + b"\n"
        if entry_id is not None and n == len(events) - 1:
            frame += b"id: " + entry_id + b"\n"
        out.append(frame + b"\n")
    return b"".join(out)


def metadata(run_id: str, attempt: int = 1) -> LgEvent:
    return "metadata", {"run_id": run_id, "attempt": attempt}


def failure(error: str | None) -> LgEvent:
    message = error or "the run failed"
    return "error", {"error": "TimeoutError" if message == TIMED_OUT else "RunError", "message": message}


@dataclass
class RunView:
    """What rendering a run needs: who it is, what was asked, and the thread before it (read when first needed)."""

    run_id: str
    thread_id: str
    agent_id: str
    human: dict[str, Any]
    modes: frozenset[str]
    prior: Callable[[], Awaitable[list[dict[str, Any]]]]


@dataclass
class Renderer:
    """Turns one run's entries into events, dropping those of an attempt a retry made obsolete."""

    view: RunView
    attempt: int = 0
    _prior: list[dict[str, Any]] | None = field(default=None, init=False)

    async def _before(self) -> list[dict[str, Any]]:
        if self._prior is None:
            self._prior = await self.view.prior()
        return self._prior

    def _meta(self, attempt: int) -> dict[str, Any]:
        v = self.view
        return {
            "run_id": v.run_id,
            "thread_id": v.thread_id,
            "assistant_id": v.agent_id,
            "graph_id": v.agent_id,
            "langgraph_node": v.agent_id,
            "langgraph_step": 1,
            "attempt": attempt,
        }

    async def events(self, entry: Entry, *, emit: bool) -> list[LgEvent]:
        """The events of `entry`; with `emit` False (entries the client already has) only what it changes is kept."""
        if entry.attempt < self.attempt:
            return []
        self.attempt = entry.attempt
        if not emit:
            return []
        v, kind = self.view, entry.type
        if kind == b"request.accepted":
            return [metadata(v.run_id, entry.attempt)]
        if kind == b"run.retrying":
            return [metadata(v.run_id, entry.attempt)]
        if kind == b"run.started":
            # The state as the run starts; after a retry it also takes back the lost attempt's partial reply.
            return [("values", {"messages": [*await self._before(), v.human]})] if "values" in v.modes else []
        if kind == b"token" and "messages-tuple" in v.modes:
            text = orjson.loads(entry.json)["data"].get("text", "")
            return [("messages", [ai(text, ai_id(v.run_id, entry.attempt), chunk=True), self._meta(entry.attempt)])]
        if kind == b"message":
            reply = ai(orjson.loads(entry.json)["data"].get("content") or "", ai_id(v.run_id, entry.attempt))
            out: list[LgEvent] = []
            if "updates" in v.modes:
                out.append(("updates", {v.agent_id: {"messages": [reply]}}))
            if "values" in v.modes:
                out.append(("values", {"messages": [*await self._before(), v.human, reply]}))
            return out
        if kind == b"run.failed":
            return [failure(orjson.loads(entry.json)["data"].get("error"))]
        if kind == b"done":
            return [("end", None)]
        return []
