"""The worker's MCP client in process, against the real test MCP server: tool lists are cached per worker
for TOOL_LIST_TTL_SECONDS, and a call is cancelled on the server when its caller is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from common.agents.registry import AgentTools
from common.platform.settings import Settings
from tests.conftest import wait_until
from tests.fakes.mcp_server import FakeMcp
from workers.mcp_client import McpPool


@pytest.fixture
def mcp() -> Iterator[FakeMcp]:
    with FakeMcp() as server:
        yield server


def config(mcp: FakeMcp) -> AgentTools:
    return AgentTools.model_validate(
        {"servers": [{"name": "t", "url": mcp.url}], "allow": ["t.echo", "t.extra", "t.block"]}
    )


async def test_tool_lists_are_cached_until_their_ttl(mcp: FakeMcp) -> None:
    cached, fresh = McpPool(Settings(tool_list_ttl_seconds=3600)), McpPool(Settings(tool_list_ttl_seconds=0))
    try:
        for pool in (cached, fresh):
            tools, down = await pool.catalog(config(mcp))
            assert sorted(t.qualified for t in tools) == ["t.block", "t.echo"] and not down
        mcp.mcp.add_tool(lambda: "extra", name="extra", description="Added later.")
        assert sorted(t.qualified for t in (await cached.catalog(config(mcp)))[0]) == ["t.block", "t.echo"]
        assert sorted(t.qualified for t in (await fresh.catalog(config(mcp)))[0]) == ["t.block", "t.echo", "t.extra"]
    finally:
        await cached.close()
        await fresh.close()


async def test_cancelling_the_caller_cancels_the_call_on_the_server(mcp: FakeMcp) -> None:
    pool = McpPool(Settings())
    try:
        tools, _ = await pool.catalog(config(mcp))
        block = next(t for t in tools if t.qualified == "t.block")
        call = asyncio.create_task(pool.call(block, {}))
        await asyncio.to_thread(wait_until, lambda: mcp.in_flight["block"] == 1, 30, "the call to start")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.to_thread(wait_until, lambda: mcp.cancelled["block"] == 1, 30, "the server to cancel it")
    finally:
        await pool.close()
