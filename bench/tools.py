"""The cost of one tool round trip: `python bench/tools.py [--runs 200]` (bench/README.md, "Tool round trip").

Starts embedded Postgres + Valkey, the demo MCP server (workers/mcp_demo.py) over streamable HTTP on
loopback, a gateway and one worker whose agent has that server, on the offline model (replies of 5 tokens,
no pacing). Then, one at a time after a warm-up:
- direct: `call_tool("calculate")` on one open MCP session, as a worker holds it;
- plain: a request the model answers at once (`POST /api/v1/requests/web?wait=30`, to its stored reply);
- tool: a request whose model asks for the calculator, gets its result and answers quoting it.
"tool - plain" is what one round trip model → worker → MCP → model adds to a request; minus "direct",
it is relaygate's own share (the checkpoint rows, the events, the second model call).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench

WARMUP = 10
TOOL_LINE = '/tool demo.calculate {"expression": "6*7"}'


def _agents_file(folder: Path, mcp_url: str) -> Path:
    path = folder / "agents.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "agents": [
                    {
                        "id": "bench-tools",
                        "default": True,
                        "feature": "default",
                        "tools": {"servers": [{"name": "demo", "url": mcp_url}]},
                    }
                ]
            }
        )
    )
    return path


def _mcp_server(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = bench.free_port()
    log = (folder / "mcp.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.mcp_demo", "--http", str(port)],
        cwd=bench.ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"the demo MCP server did not start; see {folder / 'mcp.log'}")


async def _timed(runs: int, call: Callable[[], Awaitable[None]]) -> list[float]:
    for _ in range(WARMUP):
        await call()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        seconds.append(time.perf_counter() - started)
    return seconds


async def _direct(url: str, runs: int) -> list[float]:
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(timeout=30) as client,
        streamable_http_client(url, http_client=client) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()

        async def call() -> None:
            result = await session.call_tool("calculate", {"expression": "6*7"})
            assert not result.is_error, result

        return await _timed(runs, call)


async def _requests(stack: bench.Stack, content: str, runs: int) -> list[float]:
    headers = {"Authorization": f"Bearer {stack.token('bench', 'bench')}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.port}", headers=headers, timeout=60) as client:

        async def call() -> None:
            r = await client.post("/api/v1/requests/web?wait=30", json={"content": content, "new_session": True})
            assert r.status_code == 200 and r.json()["status"] == "completed", r.text

        return await _timed(runs, call)


def _line(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return (
        f"{name:<7} p50 {statistics.median(ms):7.2f} ms   p95 {bench.percentile(ms, 0.95):7.2f} ms"
        f"   mean {statistics.fmean(ms):7.2f} ms   (n={len(ms)})"
    )


async def measure(infra: bench.Infra, runs: int, folder: Path) -> None:
    mcp, url = _mcp_server(folder)
    stack = bench.Stack(
        infra,
        folder,
        "tools-" + uuid.uuid4().hex,
        {
            "AGENTS_FILE": str(_agents_file(folder, url)),
            "OFFLINE_MODEL_TOKENS": "5",
            "OFFLINE_MODEL_TOKENS_PER_SECOND": "0",
        },
    )
    try:
        await stack.start_gateway()
        await stack.start_worker()
        direct = await _direct(url, runs)
        plain = await _requests(stack, "hello", runs)
        tool = await _requests(stack, TOOL_LINE, runs)
    finally:
        await stack.stop_worker()
        await stack.stop_gateway()
        mcp.terminate()
        mcp.wait(10)
    print(_line("direct", direct))
    print(_line("plain", plain))
    print(_line("tool", tool))
    added, call = statistics.median(tool) - statistics.median(plain), statistics.median(direct)
    print(
        f"one tool round trip adds {added * 1000:.2f} ms at p50 to a request; the MCP call itself is "
        f"{call * 1000:.2f} ms of it, relaygate's share {(added - call) * 1000:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rg-tools-") as tmp:
        infra = bench.Infra.start(Path(tmp))
        try:
            asyncio.run(measure(infra, args.runs, Path(tmp)))
        finally:
            infra.stop()


if __name__ == "__main__":
    main()
