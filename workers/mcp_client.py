"""Agents' MCP tool servers seen from one worker: one live session per server, tool lists cached, calls bounded.

Each server's session is owned by a background task (the SDK's transports are context managers that
must open and close in one task); calls from any run share it. A server that cannot be reached within
TOOL_CONNECT_TIMEOUT_SECONDS (a stdio server's start included), a call past TOOL_CALL_TIMEOUT_SECONDS
or a broken session gives a clear error, never a hang; a result
longer than TOOL_RESULT_MAX_CHARS is cut with a marker. Lists are refreshed after
TOOL_LIST_TTL_SECONDS or when the server says its tools changed. The SDK is imported on first use, so a
worker whose agents have no tools does not pay for it at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from common.agents.registry import AgentTools, ToolServer
from common.platform.redact import scrub
from common.platform.settings import Settings

if TYPE_CHECKING:
    import mcp_types
    from mcp.client.session import ClientSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tool:
    """One tool of one server, named `server.tool` everywhere relaygate shows it."""

    server: ToolServer
    name: str
    description: str
    schema: dict[str, Any]

    @property
    def qualified(self) -> str:
        return f"{self.server.name}.{self.name}"


@dataclass(frozen=True)
class Outcome:
    """What a call gave the model: its output, or why it failed."""

    ok: bool
    output: str
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> Outcome:
        return cls(False, "", error)

    def for_model(self) -> str:
        return self.output if self.ok else f"error: {self.error}"


class Unavailable(Exception):
    """The tool server could not be reached or its session broke."""


def _key(server: ToolServer) -> str:
    return json.dumps(server.model_dump(), sort_keys=True)


def _reason(exc: BaseException) -> str:
    """The innermost cause of a failure, scrubbed of URLs and credentials (anyio wraps them in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = scrub(" ".join(str(exc).split()))[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text_of(result: mcp_types.CallToolResult) -> str:
    import mcp_types

    parts = []
    for item in result.content:
        if isinstance(item, mcp_types.TextContent):
            parts.append(item.text)
        else:
            parts.append(f"[{item.type} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


def capped(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with a marker saying how much was dropped."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[truncated: {len(text) - limit} more characters]"


@dataclass(eq=False)
class _Link:
    """One session to one server, opened and closed by its own task."""

    server: ToolServer
    on_tools_changed: Any
    session: ClientSession | None = None
    error: BaseException | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._own(), name=f"mcp-{self.server.name}")

    async def _own(self) -> None:
        from mcp.client.session import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await self._open(stack)
                session = await stack.enter_async_context(ClientSession(read, write, message_handler=self._message))
                await session.initialize()
                self.session = session
                self.ready.set()
                await self.closing.wait()
        except BaseException as exc:
            self.error = exc
            if not isinstance(exc, asyncio.CancelledError):
                log.warning("tool server session ended", extra={"server": self.server.name, "error": _reason(exc)})
        finally:
            self.session = None
            self.done = True
            self.ready.set()

    async def _open(self, stack: contextlib.AsyncExitStack) -> Any:
        """The transport's read and write streams, closed (HTTP client and all) with `stack`."""
        import httpx2
        from mcp.client.stdio import StdioServerParameters, get_default_environment, stdio_client
        from mcp.client.streamable_http import streamable_http_client

        server = self.server
        if server.url:
            client = await stack.enter_async_context(
                httpx2.AsyncClient(headers=server.resolved_headers(), timeout=httpx2.Timeout(30.0, read=300.0))
            )
            return await stack.enter_async_context(streamable_http_client(server.url, http_client=client))
        command, *args = server.command
        if command in ("python", "python3"):
            command = sys.executable
        params = StdioServerParameters(command=command, args=args, env=get_default_environment())
        return await stack.enter_async_context(stdio_client(params))

    async def _message(self, message: Any) -> None:
        import mcp_types

        if isinstance(message, mcp_types.ToolListChangedNotification):
            self.on_tools_changed(self.server)

    async def get(self) -> ClientSession:
        await self.ready.wait()
        if self.session is None:
            raise Unavailable(_reason(self.error) if self.error else "session closed")
        return self.session

    async def close(self) -> None:
        self.closing.set()
        if self.task is not None and not self.task.done():
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(self.task)
            except TimeoutError:
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)


class McpPool:
    """The worker's sessions and cached tool lists, shared by every run."""

    def __init__(self, settings: Settings) -> None:
        self.timeout = settings.tool_call_timeout_seconds
        self.connect_timeout = settings.tool_connect_timeout_seconds
        self.max_chars = settings.tool_result_max_chars
        self.list_ttl = settings.tool_list_ttl_seconds
        self._links: dict[str, _Link] = {}
        self._lists: dict[str, tuple[float, list[Tool]]] = {}

    def _link(self, server: ToolServer) -> _Link:
        key = _key(server)
        link = self._links.get(key)
        if link is None or link.done:
            link = _Link(server, self._forget_list)
            link.start()
            self._links[key] = link
        return link

    def _forget_list(self, server: ToolServer) -> None:
        self._lists.pop(_key(server), None)

    async def _session(self, server: ToolServer) -> ClientSession:
        link = self._link(server)
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await link.get()
        except TimeoutError:
            await self._drop(server)
            raise Unavailable(
                f"tool server {server.name!r} did not connect within {self.connect_timeout:g} s"
            ) from None
        except Unavailable as exc:
            raise Unavailable(f"tool server {server.name!r} is unavailable ({exc})") from None

    async def list_tools(self, server: ToolServer) -> list[Tool]:
        """The server's tools, from the cache while it is fresh."""
        key = _key(server)
        cached = self._lists.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.list_ttl:
            return cached[1]
        session = await self._session(server)
        try:
            async with asyncio.timeout(self.timeout):
                listed = await session.list_tools()
        except TimeoutError:
            await self._drop(server)
            raise Unavailable(f"tool server {server.name!r} did not answer within {self.timeout:g} s") from None
        except Unavailable:
            raise
        except Exception as exc:
            await self._drop(server)
            raise Unavailable(f"tool server {server.name!r} is unavailable ({_reason(exc)})") from exc
        tools = [Tool(server, t.name, t.description or "", dict(t.input_schema)) for t in listed.tools]
        self._lists[key] = (time.monotonic(), tools)
        return tools

    async def catalog(self, config: AgentTools) -> tuple[list[Tool], dict[str, str]]:
        """The agent's allowed tools of every server that answers, and why each other server is left out."""
        listed = await asyncio.gather(*(self.list_tools(s) for s in config.servers), return_exceptions=True)
        tools: list[Tool] = []
        down: dict[str, str] = {}
        for server, result in zip(config.servers, listed, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                down[server.name] = str(result)
                continue
            tools += [t for t in result if config.allows(t.qualified)]
        return tools, down

    async def call(self, tool: Tool, arguments: dict[str, Any]) -> Outcome:
        """Run one call within the timeout; cancelling the caller cancels the call on the server too."""
        try:
            session = await self._session(tool.server)
        except Unavailable as exc:
            return Outcome.failed(str(exc))
        try:
            async with asyncio.timeout(self.timeout):
                result = await session.call_tool(tool.name, arguments)
        except TimeoutError:
            return Outcome.failed(f"tool {tool.qualified} timed out after {self.timeout:g} s")
        except Exception as exc:
            return Outcome.failed(f"tool {tool.qualified} failed ({_reason(exc)})")
        text = capped(_text_of(result), self.max_chars)
        if result.is_error:
            return Outcome.failed(text or f"tool {tool.qualified} reported an error")
        return Outcome(True, text)

    async def _drop(self, server: ToolServer) -> None:
        link = self._links.pop(_key(server), None)
        if link is not None:
            await link.close()

    async def close(self) -> None:
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
