"""A webhook receiver and a Twilio-compatible SMS endpoint on a loopback port, scriptable per path.

Webhooks are verified with the Standard Webhooks library; a repeated `webhook-id` is counted
but processed once, as a receiver following the standard does.
"""

from __future__ import annotations

import base64
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from standardwebhooks import Webhook, WebhookVerificationError

from tests.fakes.loopback import JsonHandler, Loopback


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool


@dataclass
class Receiver:
    secrets: dict[str, str] = field(default_factory=dict)  # path -> whsec_ secret
    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=lambda: defaultdict(list))
    received: list[Received] = field(default_factory=list)
    processed: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # path -> webhook ids
    hold: threading.Event | None = None
    server: Loopback | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return self.server.url

    def then(self, path: str, *answers: int | tuple[int, dict[str, str]]) -> None:
        """Answer the next requests on `path` with these statuses (then 200)."""
        self.script[path].extend(a if isinstance(a, tuple) else (a, {}) for a in answers)

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def start(self) -> Receiver:
        owner = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified = False
                if self.path in owner.secrets:
                    try:
                        Webhook(owner.secrets[self.path]).verify(body, headers)
                        verified = True
                    except WebhookVerificationError:
                        self.answer(401, {}, {})
                        return
                owner.received.append(Received(self.path, headers, body, verified))
                if owner.hold is not None and not owner.hold.is_set():
                    owner.hold.wait(30)
                status, extra = owner.script[self.path].pop(0) if owner.script[self.path] else (200, {})
                if 200 <= status < 300 and "webhook-id" in headers:
                    owner.processed[self.path].add(headers["webhook-id"])
                self.answer(
                    status,
                    extra,
                    {"sid": f"SM{len(owner.received)}"} if "/Messages.json" in self.path else {"ok": True},
                )

        self.server = Loopback(Handler)
        return self

    def stop(self) -> None:
        if self.server:
            self.server.close()


def sms_form(r: Received) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(r.body.decode()).items()}


def basic_auth(r: Received) -> tuple[str, str]:
    user, _, password = base64.b64decode(r.headers["authorization"].split()[1]).decode().partition(":")
    return user, password
