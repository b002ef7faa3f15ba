"""A real MCP server for the tests, built with the `mcp` package: streamable HTTP on a loopback port,
served by uvicorn from a daemon thread, counting every call so a test can prove what ran and how often.

Tools: `echo`, `add`, `record` (counted), `fail` (a tool error), `slow` (sleeps), `block` (waits until
the test releases it; a cancelled call is noted), `hold` (only its first call waits), `pair` (returns
only once two calls are in flight together, so sequential calls fail), `big` (a long result) and
`header` (a request header's value).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from cli.dev.embedded import free_port


class FakeMcp:
    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.cancelled: collections.Counter[str] = collections.Counter()
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.release = threading.Event()
        self.headers: dict[str, str] = {}
        self._lock = threading.Lock()
        self.port = free_port()
        self._server: uvicorn.Server | None = None
        self.mcp = self._build()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def _build(self) -> MCPServer:
        server = MCPServer("relaygate-test-tools")

        @server.tool()
        def echo(text: str) -> str:
            """Return the text."""
            self._count("echo")
            return text

        @server.tool()
        def add(a: float, b: float) -> str:
            """Add two numbers."""
            self._count("add")
            return f"{a + b:g}"

        @server.tool()
        def record(n: int) -> str:
            """Record that call n happened."""
            self._count("record")
            return f"recorded {n}"

        @server.tool()
        def fail(reason: str) -> str:
            """Always fails with the reason."""
            self._count("fail")
            raise ToolError(reason)

        @server.tool()
        async def slow(seconds: float) -> str:
            """Sleep, then answer."""
            self._count("slow")
            await anyio.sleep(seconds)
            return "slept"

        @server.tool()
        async def block() -> str:
            """Wait until the test releases it."""
            self._count("block")
            with self._lock:
                self.in_flight["block"] += 1
            try:
                while not self.release.is_set():
                    await anyio.sleep(0.02)
            except anyio.get_cancelled_exc_class():
                with self._lock:
                    self.cancelled["block"] += 1
                raise
            finally:
                with self._lock:
                    self.in_flight["block"] -= 1
            return "released"

        @server.tool()
        async def hold() -> str:
            """The first call waits until the test releases it; later calls answer at once."""
            self._count("hold")
            with self._lock:
                self.in_flight["hold"] += 1
            try:
                while self.calls["hold"] < 2 and not self.release.is_set():
                    await anyio.sleep(0.02)
            finally:
                with self._lock:
                    self.in_flight["hold"] -= 1
            return "held"

        @server.tool()
        async def pair(name: str) -> str:
            """Answers only while another `pair` call is in flight too (proves calls run in parallel)."""
            self._count("pair")
            with self._lock:
                self.in_flight["pair"] += 1
            try:
                with anyio.fail_after(20):
                    while self.calls["pair"] < 2:
                        await anyio.sleep(0.02)
            except TimeoutError as exc:
                raise ToolError("the other call never came") from exc
            finally:
                with self._lock:
                    self.in_flight["pair"] -= 1
            return f"paired {name}"

        @server.tool()
        def big(size: int) -> str:
            """A result of `size` characters."""
            self._count("big")
            return "x" * size

        @server.tool()
        def header(name: str, ctx: Context) -> str:
            """The value of a request header the client sent."""
            self._count("header")
            request: Any = ctx.request_context.request
            return str(request.headers.get(name, "")) if request is not None else ""

        return server

    def start(self) -> FakeMcp:
        app = self.mcp.streamable_http_app()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        threading.Thread(target=self._server.run, name="fake-mcp", daemon=True).start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake MCP server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    def __enter__(self) -> FakeMcp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
