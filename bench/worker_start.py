"""A worker's cold start: `python bench/worker_start.py [--runs 5]` (bench/README.md, "Worker start").

Starts a gateway on embedded Postgres + Valkey, then `--runs` times spawns an agent worker
(`python -m cli.main worker`) and at the same moment sends it a request (offline model, 20 tokens,
`POST /stream`), and prints, per run and as medians, the seconds from spawn to "worker ready" (stores
open, taking jobs), to the request's **first token** (what a user waiting on a fresh worker sees), and
to "model layer ready" (every model of the worker runs without waiting: at once for the offline model
and OpenAI-compatible endpoints, after litellm's import for other providers), and the worker's RSS at
its first token.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import orjson
import psutil
import run as bench


async def _seconds_until(log: Path, marker: bytes, started: float, deadline: float) -> float:
    while time.monotonic() < deadline:
        if marker in log.read_bytes():
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{marker.decode()!r} not seen; see {log}")


async def _first_token(client: httpx.AsyncClient, token: str, started: float) -> float:
    """Seconds from `started` to the first `token` event of a new request's compat stream."""
    path = f"/stream?feature_id=default&chat_id={uuid.uuid4().hex[:12]}"
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    async with client.stream("POST", path, headers=headers, json={}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and orjson.loads(line[6:]).get("type") == "token":
                return time.monotonic() - started
    raise RuntimeError("the stream ended without a token")


async def measure(runs: int, folder: Path, infra: bench.Infra) -> None:
    stack = bench.Stack(infra, folder, "start-" + uuid.uuid4().hex, {"OFFLINE_MODEL_TOKENS": "20"})
    ready, first, model, rss = [], [], [], []
    try:
        await stack.start_gateway()
        token = stack.token("start-user", "bench-start-" + uuid.uuid4().hex[:6])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.port}", timeout=120) as client:
            for n in range(runs):
                started = time.monotonic()
                worker = stack._spawn("worker", [sys.executable, "-m", "cli.main", "worker"])
                log, deadline = stack.logs[-1], started + 90
                try:
                    asked = asyncio.create_task(_first_token(client, token, started))
                    ready.append(await _seconds_until(log, b'"worker ready"', started, deadline))
                    first.append(await asked)
                    rss.append(psutil.Process(worker.pid).memory_info().rss / 2**20)
                    model.append(await _seconds_until(log, b'"model layer ready"', started, deadline))
                finally:
                    worker.terminate()
                    worker.wait(30)
                print(
                    f"run {n + 1}: worker ready {ready[-1]:.2f} s, first token {first[-1]:.2f} s, "
                    f"model layer ready {model[-1]:.2f} s, RSS {rss[-1]:.0f} MB",
                    flush=True,
                )
    finally:
        await stack.stop_gateway()
        infra.stop()
    print(
        f"median of {runs}: worker ready {statistics.median(ready):.2f} s (max {max(ready):.2f}), "
        f"first token {statistics.median(first):.2f} s (max {max(first):.2f}), "
        f"model layer ready {statistics.median(model):.2f} s (max {max(model):.2f}), "
        f"RSS {statistics.median(rss):.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rg-start-") as tmp:
        asyncio.run(measure(args.runs, Path(tmp), bench.Infra.start(Path(tmp))))


if __name__ == "__main__":
    main()
