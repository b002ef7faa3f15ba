"""A small fake of Slack's Web API on a loopback port: records `POST /api/<method>` calls the real
slack-sdk client makes and answers like Slack (`{"ok": true, "ts": ...}`), with scriptable errors."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from tests.fakes.loopback import JsonHandler, Loopback


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str
    at: float = field(default_factory=time.time)  # when the fake received it


@dataclass
class FakeSlack:
    calls: list[Call] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, str], dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    server: Loopback | None = None
    _ts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api_url(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/api/"

    def fail_next(
        self, method: str, status: int, headers: dict[str, str] | None = None, body: dict[str, Any] | None = None
    ) -> None:
        self.script[method].append((status, headers or {}, body or {"ok": False, "error": "ratelimited"}))

    def of(self, method: str, channel: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.method == method and (channel is None or c.args.get("channel") == channel)]

    def start(self) -> FakeSlack:
        owner = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                method = self.path.removeprefix("/api/")
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                if "json" in self.headers.get("content-type", ""):
                    args = json.loads(raw or b"{}")
                else:
                    args = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                token = self.headers.get("authorization", "").removeprefix("Bearer ")
                with owner._lock:
                    scripted = owner.script[method].pop(0) if owner.script[method] else None
                    if scripted is None:
                        owner.calls.append(Call(method, args, token))
                        owner._ts += 1
                        ts = args.get("ts") or f"1700000000.{owner._ts:06d}"
                if scripted is not None:
                    status, headers, body = scripted
                else:
                    status, headers, body = 200, {}, {"ok": True, "channel": args.get("channel"), "ts": ts}
                self.answer(status, headers, body)

        self.server = Loopback(Handler)
        return self

    def stop(self) -> None:
        if self.server:
            self.server.close()
