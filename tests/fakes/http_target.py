"""A loopback HTTP(S) server that outbound requests aim at: it records every request and answers by path.

`/echo` answers the request's method, path, headers and body as JSON; `/big/<n>` sends n bytes;
`/redirect?to=<url>` answers 302 to that URL; `/hang` answers only when the server closes.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tests.fakes.loopback import JsonHandler, Loopback


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Target:
    hits: list[Hit] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    server: Loopback | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, tls: ssl.SSLContext | None = None) -> Target:
        owner = self

        class Handler(JsonHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                owner.hits.append(Hit(self.command, self.path, headers, body))
                url = urlsplit(self.path)
                if url.path == "/redirect":
                    self.answer(302, {"location": parse_qs(url.query)["to"][0]}, {})
                elif url.path.startswith("/big/"):
                    size = int(url.path.rsplit("/", 1)[1])
                    self.send_response(200)
                    self.send_header("content-type", "text/plain")
                    self.send_header("content-length", str(size))
                    self.end_headers()
                    self.wfile.write(b"x" * size)
                elif url.path == "/hang":
                    owner.released.wait(30)
                else:
                    self.answer(
                        200,
                        {},
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": headers,
                            "body": body.decode(errors="replace"),
                        },
                    )

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = Loopback(Handler)
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: owner.server_names.append(name)  # type: ignore[assignment]
            self.server.server.socket = tls.wrap_socket(self.server.server.socket, server_side=True)
        return self

    def stop(self) -> None:
        self.released.set()
        if self.server:
            self.server.close()
