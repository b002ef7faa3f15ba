"""A fake OpenAI-compatible model provider: a real HTTP server on a loopback port.

It speaks the Chat Completions streaming protocol (`POST /v1/chat/completions` with
`"stream": true` answers server-sent `chat.completion.chunk` events and `[DONE]`), records
every request (headers and JSON body) and can be scripted per call: a reply text, or an
HTTP error status with an OpenAI-style error body. Workers talk to it through litellm
exactly as they would talk to a real provider.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_REPLY = "Hello from the fake provider."


@dataclass
class Call:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def user_text(self) -> str:
        return next((str(m["content"]) for m in reversed(self.messages) if m.get("role") == "user"), "")


@dataclass
class ToolCalls:
    """A turn that asks for tool calls: (provider tool name, arguments) pairs, streamed as `tool_calls`
    deltas (each call's arguments split over two chunks, as providers do) ending with `tool_calls`."""

    calls: list[tuple[str, dict[str, Any]]]
    text: str = ""
    ids: list[str] | None = None  # the calls' ids (default: fresh ones)


@dataclass
class Fail:
    status: int
    message: str = "The server is overloaded, please try again later."
    type: str = "server_error"


@dataclass
class FakeOpenAI:
    """Start with `start()`; script with `reply(...)`/`fail(...)`; inspect `calls`."""

    calls: list[Call] = field(default_factory=list)
    usage_trailer: bool = False  # after the finish chunk, a usage chunk with no choices (as `include_usage` sends)
    default: str = DEFAULT_REPLY  # the answer of calls nothing was scripted for
    pace: float = 0.0  # seconds between a reply's text chunks
    disconnects: int = 0  # replies whose client went away before their end
    _script: deque[str | Fail | ToolCalls] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def reply(self, *texts: str) -> None:
        """The next calls answer these texts, one per call (later calls get DEFAULT_REPLY)."""
        with self._lock:
            self._script.extend(texts)

    def tools(self, *turns: ToolCalls) -> None:
        """The next calls ask for these tool calls, one turn per call."""
        with self._lock:
            self._script.extend(turns)

    def fail(self, status: int, times: int = 1, message: str | None = None, type: str = "server_error") -> None:
        """The next `times` calls answer HTTP `status` with an OpenAI error body."""
        with self._lock:
            self._script.extend([Fail(status, message or Fail.message, type)] * times)

    def calls_with(self, text: str) -> list[Call]:
        """Calls whose latest user message is `text`."""
        with self._lock:
            return [c for c in self.calls if c.user_text == text]

    def _next(self, call: Call) -> str | Fail | ToolCalls:
        with self._lock:
            self.calls.append(call)
            return self._script.popleft() if self._script else self.default

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                body = json.loads(raw or b"{}")
                answer = fake._next(Call(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if isinstance(answer, Fail):
                    return self._json(
                        answer.status,
                        {"error": {"message": answer.message, "type": answer.type, "param": None, "code": None}},
                    )
                try:
                    self._stream(str(body.get("model", "")), answer)
                except (BrokenPipeError, ConnectionResetError):
                    with fake._lock:
                        fake.disconnects += 1

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, model: str, answer: str | ToolCalls) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                chunk_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

                def send(delta: dict[str, Any], finish: str | None = None) -> None:
                    chunk = {
                        "id": chunk_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()

                text = answer.text if isinstance(answer, ToolCalls) else answer
                words = text.split(" ") if text else []
                for i, word in enumerate(words):
                    piece = word if i == len(words) - 1 else word + " "
                    send({"role": "assistant", "content": piece} if i == 0 else {"content": piece})
                    if fake.pace:
                        time.sleep(fake.pace)
                if isinstance(answer, ToolCalls):
                    for index, (name, arguments) in enumerate(answer.calls):
                        raw = json.dumps(arguments)
                        half = len(raw) // 2
                        call_id = answer.ids[index] if answer.ids else f"call_{uuid.uuid4().hex[:10]}"
                        send(
                            {
                                "tool_calls": [
                                    {
                                        "index": index,
                                        "id": call_id,
                                        "type": "function",
                                        "function": {"name": name, "arguments": raw[:half]},
                                    }
                                ]
                            }
                        )
                        send({"tool_calls": [{"index": index, "function": {"arguments": raw[half:]}}]})
                    send({}, "tool_calls")
                else:
                    send({}, "stop")
                if fake.usage_trailer:
                    usage = {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}
                    trailer = {
                        "id": chunk_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                    self.wfile.write(f"data: {json.dumps(trailer)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-openai", daemon=True
        ).start()
        return self

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
