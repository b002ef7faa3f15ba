"""relaygate events as AI SDK UI message chunks (`data:` lines, `x-vercel-ai-ui-message-stream: v1`).

A reply is one message whose id is the request id, so a replay (a resumed stream) replaces the
message in the client instead of adding a second one. Text of an attempt that a retry superseded
is never shown next to the new attempt's: a replay skips it, and a live stream that already showed
some ends with an `error` chunk asking the client to resume (AI SDK 5/6 cannot retract text).
"""

from __future__ import annotations

from typing import Any

import orjson

from api.streams.follow import Item
from common.platform.redact import scrub
from common.streams.hub import DRAIN, HEARTBEAT, Entry

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keepalive\n\n"
# Starts the `errorText` of endings that a resume (`resumeStream()`) continues: the reply goes on.
RESUME_PREFIX = "relaygate: resume"
RETRIED = f"{RESUME_PREFIX}: this reply restarted after its worker was lost; resume the stream to see it"
DRAINED = f"{RESUME_PREFIX}: the gateway is shutting down; resume the stream to continue the reply"


def frame(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


class UiMessageStream:
    """Renders one request's events; `superseded_below`: attempts older than this are skipped (a replay)."""

    def __init__(self, request_id: str, session_id: str, superseded_below: int = 1) -> None:
        self.request_id = request_id
        self.session_id = session_id
        self.attempt = superseded_below
        self.shown = False  # this response showed the client parts of `self.attempt`
        self.text_id: str | None = None
        self.parts = 0
        self.step = False
        self.terminal: dict[str, Any] = {}
        self.ended: str | None = None

    def opening(self) -> bytes:
        return frame(
            {
                "type": "start",
                "messageId": self.request_id,
                "messageMetadata": {"request_id": self.request_id, "session_id": self.session_id},
            }
        )

    def render(self, item: Item) -> bytes:
        if item is HEARTBEAT:
            return KEEPALIVE
        if item is DRAIN:
            return self._end("drained", frame({"type": "error", "errorText": DRAINED}))
        assert isinstance(item, Entry)
        if item.attempt < self.attempt:
            return b""
        if item.attempt > self.attempt:
            if self.shown:
                return self._end("retried", self._close_text() + frame({"type": "error", "errorText": RETRIED}))
            self.attempt, self.terminal = item.attempt, {}
        kind = item.type
        if kind == b"done":
            return self._finish(orjson.loads(item.json)["data"].get("status", ""))
        if kind in (b"run.completed", b"run.failed", b"run.cancelled"):
            self.terminal = {"type": kind.decode(), **orjson.loads(item.json)["data"]}
            return b""
        if kind == b"run.started":
            return self._start_step()
        if kind == b"token":
            return self._text(orjson.loads(item.json)["data"].get("text", ""))
        if kind in (b"tool.call", b"tool.result"):
            return self._tool(kind, orjson.loads(item.json)["data"])
        return b""

    def _start_step(self) -> bytes:
        if self.step:
            return b""
        self.step = True
        return frame({"type": "start-step"})

    def _text(self, text: str) -> bytes:
        if not text:
            return b""
        out = self._start_step()
        if self.text_id is None:
            self.parts += 1
            self.text_id = f"text-{self.parts}"
            out += frame({"type": "text-start", "id": self.text_id})
        self.shown = True
        return out + frame({"type": "text-delta", "id": self.text_id, "delta": text})

    def _close_text(self) -> bytes:
        if self.text_id is None:
            return b""
        out = frame({"type": "text-end", "id": self.text_id})
        self.text_id = None
        return out

    def _tool(self, kind: bytes, data: dict[str, Any]) -> bytes:
        """A tool step as a dynamic tool part (its tool is the agent's, unknown to the client's types)."""
        call_id = str(data.get("id") or data.get("call_id") or data.get("tool_call_id") or "")
        if not call_id:
            return b""
        out = self._start_step() + self._close_text()
        self.shown = True
        if kind == b"tool.call":
            name = str(data.get("name") or data.get("tool") or "tool")
            tool_input = data.get("arguments", data.get("input", {}))
            return out + frame(
                {
                    "type": "tool-input-available",
                    "toolCallId": call_id,
                    "toolName": name,
                    "input": tool_input,
                    "dynamic": True,
                }
            )
        if data.get("error"):
            return out + frame(
                {
                    "type": "tool-output-error",
                    "toolCallId": call_id,
                    "errorText": scrub(str(data["error"])),
                    "dynamic": True,
                }
            )
        return out + frame(
            {
                "type": "tool-output-available",
                "toolCallId": call_id,
                "output": data.get("result", data.get("output")),
                "dynamic": True,
            }
        )

    def _finish(self, status: str) -> bytes:
        """The ending at the request's `done`: a failure is an `error` chunk, a stop a clean `finish`."""
        if status == "failed":
            error = scrub(str(self.terminal.get("error") or "the request failed"))
            return self._end("failed", self._close_text() + frame({"type": "error", "errorText": error}))
        out = self._close_text() + (frame({"type": "finish-step"}) if self.step else b"")
        if status == "cancelled":
            reason = str(self.terminal.get("reason") or "cancelled")
            return self._end(
                "cancelled",
                out + frame({"type": "abort", "reason": reason}) + frame({"type": "finish", "finishReason": "other"}),
            )
        return self._end("completed", out + frame({"type": "finish", "finishReason": "stop"}))

    def _end(self, how: str, out: bytes) -> bytes:
        self.ended = how
        return out + DONE
