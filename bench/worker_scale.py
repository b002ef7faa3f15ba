"""Do worker processes scale with cores? `python bench/worker_scale.py [--requests 2000] [--runs 3]`.

The end-to-end cases share the two cores with the gateway and the SSE clients, which then bound the
figure; here the workers alone are the bottleneck. With the worker stopped, `--requests` requests
(each its own session, the offline model at full speed, `--tokens` tokens) are accepted through the
gateway; then `relaygate worker --processes N` starts and drains them with nobody reading the streams.
Throughput is counted from Postgres' own clocks: tokens / (last `completed_at` - first `started_at`),
so a process's start-up is not in it. Process counts alternate run by run (1, 2, 1, 2, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench


async def accept(stack: bench.Stack, tenant: str, requests: int, tokens: int) -> None:
    """POST the requests (202, nobody waits) over 50 keep-alive connections."""
    headers = {"Authorization": f"Bearer {stack.token('u-' + tenant, tenant)}"}
    body = {"content": "hi", "new_session": True, "metadata": {"offline": {"tokens": tokens, "tokens_per_second": 0}}}
    todo = iter(range(requests))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.port}", headers=headers, timeout=30) as client:

        async def one_connection() -> None:
            for _ in todo:
                response = await client.post("/api/v1/requests/web", json=body)
                if response.status_code != 202:
                    raise RuntimeError(f"intake answered {response.status_code}: {response.text[:200]}")

        await asyncio.gather(*(one_connection() for _ in range(50)))


async def drained(stack: bench.Stack, tenant: str, requests: int, timeout: float) -> asyncpg.Record:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = await conn.fetchval(
                "SELECT count(*) FROM request_logs WHERE tenant_id = $1 AND status IN ('completed', 'failed')", tenant
            )
            if ended >= requests:
                break
            await asyncio.sleep(0.2)
        return await conn.fetchrow(
            """
            SELECT count(*) FILTER (WHERE status = 'completed') AS completed, count(*) AS total,
                   extract(epoch FROM max(completed_at) - min(started_at)) AS seconds
              FROM request_logs WHERE tenant_id = $1
            """,
            tenant,
        )
    finally:
        await conn.close()


async def one_run(stack: bench.Stack, processes: int, args: argparse.Namespace) -> dict[str, Any]:
    tenant = f"bench-scale-{uuid.uuid4().hex[:8]}"
    await stack.stop_worker()
    await accept(stack, tenant, args.requests, args.tokens)
    stack.extra_env["WORKER_PROCESSES"] = str(processes)
    await stack.start_worker()
    assert stack.worker is not None
    supervisor = psutil.Process(stack.worker.pid)

    def processes() -> dict[str, list[psutil.Process]]:
        with contextlib.suppress(psutil.Error):
            return {"worker": [supervisor, *supervisor.children(recursive=True)], **stack.infra.server_processes()}
        return stack.infra.server_processes()

    window = bench.CpuWindow(processes)
    window.begin()
    row = await drained(stack, tenant, args.requests, args.timeout)
    cpu_percent = window.end()
    cpu = window.used.get("worker", 0.0)
    await stack.stop_worker()
    tokens = row["completed"] * args.tokens
    seconds = float(row["seconds"] or 0) or float("nan")
    return {
        "tokens_per_s": round(tokens / seconds),
        "completed": row["completed"],
        "requests": row["total"],
        "seconds": round(seconds, 2),
        "worker_cpu_us_per_token": round(cpu / max(tokens, 1) * 1e6, 1),
        "cpu_percent": cpu_percent,  # of one core, over the drain (begins at the worker's start)
    }


async def main_async(args: argparse.Namespace, folder: Path, infra: bench.Infra) -> None:
    counts = [int(n) for n in args.processes.split(",")]
    stack = bench.Stack(infra, folder, "bench-" + uuid.uuid4().hex + uuid.uuid4().hex, {})
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    try:
        await stack.start_gateway()
        for run in range(1, args.runs + 1):
            for n in counts:
                result = await one_run(stack, n, args)
                results[n].append(result)
                bench.log(f"processes={n} run {run}: {result}")
    finally:
        await stack.stop_worker()
        await stack.stop_gateway()
        infra.stop()
    print(f"\n{'processes':>9} {'tokens/s (median)':>18} {'runs':>30} {'wrk us/tok':>11}")
    base = statistics.median(r["tokens_per_s"] for r in results[counts[0]])
    for n in counts:
        rates = [r["tokens_per_s"] for r in results[n]]
        median = statistics.median(rates)
        cpu = statistics.median(r["worker_cpu_us_per_token"] for r in results[n])
        print(f"{n:>9} {median:>18,.0f} {rates!s:>30} {cpu:>11.1f}  ({median / base:.2f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", default="1,2", help="worker process counts to compare, the first is the base")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300)
    bench.raise_nofile()
    folder = Path(tempfile.mkdtemp(prefix="relaygate-scale-"))
    asyncio.run(main_async(p.parse_args(), folder, bench.Infra.start(folder)))


if __name__ == "__main__":
    main()
