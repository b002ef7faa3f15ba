"""relaygate events as Chat Completions: `chat.completion.chunk` frames, or one `chat.completion`.

Clients of this protocol cannot resume or retract text, so every ending that is not a finished
reply (a failure, a cancel, a retried attempt after text was sent, a gateway shutdown) is an
`error` frame, which the `openai` SDKs raise, never a silent close.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from api.openai.errors import error_body
from api.streams.follow import Item
from common.platform.redact import scrub
from common.streams.hub import DRAIN, HEARTBEAT, Entry

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keepalive\n\n"
RETRIED = "the reply restarted after its worker was lost; the text sent so far is void: ask again"
DRAINED = "the gateway is shutting down; the reply was cut short: ask again"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Reply:
    """One request's events folded into its outcome: the text of the latest attempt, its terminal event."""

    def __init__(self, superseded_below: int = 1) -> None:
        self.attempt = superseded_below
        self.text: list[str] = []
        self.terminal: dict[str, Any] = {}
        self.status = ""

    def add(self, entry: Entry) -> bool:
        """Fold `entry` in; False when it starts a newer attempt (the text so far is void and reset)."""
        if entry.attempt < self.attempt:
            return True
        fresh = entry.attempt == self.attempt
        if not fresh:
            self.attempt, self.text, self.terminal = entry.attempt, [], {}
        if entry.type == b"token":
            self.text.append(orjson.loads(entry.json)["data"].get("text", ""))
        elif entry.type in (b"run.completed", b"run.failed", b"run.cancelled"):
            self.terminal = {"type": entry.type.decode(), **orjson.loads(entry.json)["data"]}
        elif entry.type == b"done":
            self.status = str(orjson.loads(entry.json)["data"].get("status", ""))
        return fresh

    def usage(self) -> dict[str, int]:
        """The request's own count (`run.completed`'s `usage`, the total of its attempts), else the text
        chunks the model streamed as completion tokens."""
        counted = self.terminal.get("usage") or {}
        if counted.get("output_tokens") is not None:
            return usage(int(counted.get("input_tokens") or 0), int(counted["output_tokens"]))
        return usage(0, int(self.terminal.get("output_chunks") or 0))

    def failure(self) -> tuple[int, str, str]:
        """(status, code, message) of a reply that did not complete."""
        if self.status == "cancelled":
            return 409, "cancelled", f"the reply was cancelled: {self.terminal.get('reason') or 'cancelled'}"
        return 502, "run_failed", scrub(str(self.terminal.get("error") or "the request failed"))


class CompletionChunks:
    """Renders one request's events as `chat.completion.chunk` frames."""

    def __init__(self, request_id: str, model: str, include_usage: bool) -> None:
        self.base = {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self.include_usage = include_usage
        self.reply = Reply()
        self.shown = False
        self.ended: str | None = None

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return b"data: " + orjson.dumps({**self.base, "choices": [choice]}) + b"\n\n"

    def _error(self, how: str, code: str, message: str) -> bytes:
        self.ended = how
        return b"data: " + orjson.dumps(error_body(message, 500, code)) + b"\n\n" + DONE

    def opening(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def render(self, item: Item) -> bytes:
        if item is HEARTBEAT:
            return KEEPALIVE
        if item is DRAIN:
            return self._error("drained", "gateway_shutting_down", DRAINED)
        assert isinstance(item, Entry)
        if item.attempt < self.reply.attempt:
            return b""
        if not self.reply.add(item) and self.shown:
            return self._error("retried", "reply_retried", RETRIED)
        if item.type == b"token":
            text = self.reply.text[-1]
            self.shown = self.shown or bool(text)
            return self._chunk({"content": text}) if text else b""
        if item.type != b"done":
            return b""
        if self.reply.status != "completed":
            _, code, message = self.reply.failure()
            return self._error(self.reply.status or "failed", code, message)
        self.ended = "completed"
        out = self._chunk({}, "stop")
        if self.include_usage:
            out += b"data: " + orjson.dumps({**self.base, "choices": [], "usage": self.reply.usage()}) + b"\n\n"
        return out + DONE


def completion(request_id: str, model: str, reply: Reply) -> dict[str, Any]:
    """The `chat.completion` of a completed reply."""
    message = {"role": "assistant", "content": "".join(reply.text), "refusal": None}
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": reply.usage(),
    }
