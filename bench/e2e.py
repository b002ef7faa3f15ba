"""relaygate end to end under load, beside the original prototype, in the same run.

    uv run --extra worker python bench/e2e.py [--runs 1] [--clients 50,200,1000] [--cases ...] [--client aiohttp]

Starts embedded Postgres + Valkey, then for each case one gateway (`uvicorn api.main:app`) and
N agent workers (`python -m cli.main worker`), or the prototype (bench/prototype: FastAPI +
an ARQ worker, arq max_jobs=1000). C clients at once, from separate load processes
(bench/e2e_load.py), each `POST /stream?feature_id=default&chat_id=<its own>` with a bearer
token, read to `data: [DONE]`, by raw-socket clients (`--client light`) or aiohttp ones (`--client aiohttp`).
See bench/README.md ("End to end") for the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import run as bench

CASES: dict[str, dict[str, Any]] = {
    # name: system, workers, settings
    "proto": {"system": "proto", "workers": 1, "env": {}},
    "proto-20ms": {"system": "proto", "workers": 1, "env": {"PROTO_DELAY_MS": "20"}},
    "rg": {"system": "rg", "workers": 1, "env": {}},
    "rg-2w": {"system": "rg", "workers": 2, "env": {}},
    "rg-2p": {"system": "rg", "workers": 1, "env": {"WORKER_PROCESSES": "2"}},  # relaygate worker --processes 2
    "rg-1ev": {"system": "rg", "workers": 1, "env": {"TOKEN_FLUSH_TOKENS": "1", "TOKEN_FLUSH_MS": "0"}},
    "rg-20ms": {"system": "rg", "workers": 1, "env": {"OFFLINE_MODEL_TOKENS_PER_SECOND": "50"}},
    "rg-20ms-1ev": {
        "system": "rg",
        "workers": 1,
        "env": {"OFFLINE_MODEL_TOKENS_PER_SECOND": "50", "TOKEN_FLUSH_TOKENS": "1", "TOKEN_FLUSH_MS": "0"},
    },
    # the worker streams from a fake OpenAI-compatible provider (bench/fake_provider.py) instead of the offline model
    "rg-openai": {"system": "rg", "workers": 1, "env": {}, "provider": True},
}
TOKENS = 200


class System:
    """The processes of one case: a gateway (or the prototype's app) and its workers."""

    def __init__(self, infra: bench.Infra, folder: Path, case: dict[str, Any], extra: dict[str, str]) -> None:
        env = {
            "OFFLINE_MODEL_TOKENS": str(TOKENS),
            "OFFLINE_MODEL_TOKENS_PER_SECOND": "0",
            "PROTO_MESSAGES": str(TOKENS),
            **extra,
            **case["env"],
        }
        self.case = case
        self.stack = bench.Stack(infra, folder, "bench-" + uuid.uuid4().hex + uuid.uuid4().hex, env)
        self.workers: list[Any] = []
        self.provider: Any = None

    async def start(self) -> None:
        s = self.stack
        await self._fresh_valkey()
        if self.case.get("provider"):
            await self._start_provider()
        if self.case["system"] == "proto":
            s.port = bench.free_port()
            s.gateway = s._spawn(
                "proto-app",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bench.prototype.app:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(s.port),
                    "--no-access-log",
                ],
            )
            for _ in range(self.case["workers"]):
                self.workers.append(
                    s._spawn("proto-worker", [sys.executable, "-m", "arq", "bench.prototype.worker.WorkerSettings"])
                )
            await self._health()
        else:
            await s.start_gateway()
            for _ in range(self.case["workers"]):
                s.worker = None
                await s.start_worker()
                self.workers.append(s.worker)
        await asyncio.sleep(1)

    async def _fresh_valkey(self) -> None:
        """Restart the embedded Valkey empty (same port) for each case, so a case's memory figure holds its own
        runs' streams, not an earlier case's: the prototype's 200 entries per reply left 140 MB behind, which
        a FLUSHALL does not hand back to the system."""
        infra = self.stack.infra
        if infra.valkey is None:
            return  # a server REDIS_URL names is left alone
        port = infra.valkey.port
        infra.valkey.stop()
        infra.valkey = bench.EmbeddedValkey(infra.folder / "servers" / "valkey", persistent=False, port=port)

    async def _start_provider(self) -> None:
        s = self.stack
        self.provider = s._spawn(
            "provider", [sys.executable, str(bench.BENCH / "fake_provider.py"), "--tokens", str(TOKENS)]
        )
        log, deadline = s.logs[-1], time.monotonic() + 30
        while b"BASE_URL " not in log.read_bytes():
            if self.provider.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake provider did not start; see {log}")
            await asyncio.sleep(0.05)
        base = log.read_bytes().split(b"BASE_URL ", 1)[1].split()[0].decode()
        s.extra_env.update({"LLM_MODEL": "openai/fake-model", "LLM_API_BASE": base, "LLM_API_KEY": "sk-bench"})

    async def _health(self) -> None:
        import httpx

        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{self.stack.port}/docs", timeout=1)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError("prototype app did not start")

    def processes(self) -> dict[str, list[psutil.Process]]:
        procs: dict[str, list[psutil.Process]] = {}
        for name, group in (("gateway", [self.stack.gateway]), ("worker", self.workers), ("provider", [self.provider])):
            for proc in group:
                if proc is not None and proc.poll() is None:
                    with contextlib.suppress(psutil.Error):
                        found = psutil.Process(proc.pid)
                        procs.setdefault(name, []).extend([found, *found.children(recursive=True)])
        procs.update(self.stack.infra.server_processes())
        return procs

    async def stop(self) -> None:
        for proc in [self.stack.gateway, *self.workers, self.provider]:
            await bench._terminate(proc, 20)


class MemoryPeak:
    """Peak memory of the servers while a run goes, per process group (RSS and PSS) and in all (PSS).

    PSS splits shared pages (Postgres' shared buffers, the pages a forked worker shares with its
    supervisor) between the processes that map them, so the total does not count them twice.
    """

    def __init__(self, lister: Any, every: float = 0.5) -> None:
        self.lister = lister
        self.every = every
        self.peaks: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        now: dict[str, float] = {}
        for name, procs in self.lister().items():
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    info = proc.memory_full_info()
                    now[f"{name}_rss"] = now.get(f"{name}_rss", 0.0) + info.rss / 2**20
                    now[f"{name}_pss"] = now.get(f"{name}_pss", 0.0) + info.pss / 2**20
        now["pss_total"] = sum(v for k, v in now.items() if k.endswith("_pss"))
        for key, value in now.items():
            self.peaks[key] = max(self.peaks.get(key, 0.0), value)

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.every)

    def begin(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def end(self) -> dict[str, int]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return {k: round(v) for k, v in sorted(self.peaks.items())}


async def one_run(
    system: System, folder: Path, clients: int, procs: int, timeout: float, client: str
) -> dict[str, Any]:
    token = system.stack.token(f"user-{uuid.uuid4().hex[:6]}", f"bench-e2e-{uuid.uuid4().hex[:6]}")
    chats = [uuid.uuid4().hex[:12] for _ in range(clients)]
    window = bench.CpuWindow(system.processes)
    memory = MemoryPeak(system.processes)
    loads = [
        await bench.LoadProc.start(
            "e2e",
            {
                "port": system.stack.port,
                "token": token,
                "chats": part,
                "timeout": timeout,
                "client": client,
                "expect_tokens": TOKENS,
                "sample_every": max(1, clients // 50),
            },
            folder,
            script="e2e_load.py",
        )
        for part in bench.split(chats, procs)
    ]
    for lp in loads:
        await lp.expect("READY", 30)
    window.begin()
    memory.begin()
    results = [await lp.expect("RESULT", timeout + 30) for lp in loads]
    cpu = window.end()
    peak_mb = await memory.end()
    for lp in loads:
        await lp.wait()
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    first = [v for r in results for v in r["first_ms"]]
    accepted = [v for r in results for v in r.get("accept_ms", [])]
    rates = [v for r in results for v in r["rates"]]
    lat = [v for r in results for v in r["latency_ms"]]
    ending = [v for r in results for v in r.get("ending_ms", [])]
    return {
        "tokens_per_s": round(tokens / max(end - start, 1e-6)),
        "first_p50_ms": round(bench.percentile(first, 0.5), 1),
        "accept_p50_ms": round(bench.percentile(accepted, 0.5), 1) if accepted else None,  # headers (aiohttp)
        "relay_p50_ms": round(bench.percentile(lat, 0.5), 1),
        "relay_p99_ms": round(bench.percentile(lat, 0.99), 1),
        "stream_rate_p10": round(bench.percentile(rates, 0.1), 1),
        "ending_p50_ms": round(bench.percentile(ending, 0.5), 1) if ending else None,  # last token -> [DONE]
        "ending_p90_ms": round(bench.percentile(ending, 0.9), 1) if ending else None,
        "complete": sum(r["complete"] for r in results),
        "cut_short": sum(r["short"] for r in results),
        "unfinished": sum(r["unfinished"] for r in results),
        "run_retrying": sum(r["retrying"] for r in results),
        "run_failed": sum(r["failed"] for r in results),
        "server_cpu_s": round(sum(v for k, v in window.used.items() if k != "load"), 1),
        "worker_cpu_us_per_token": round(window.used.get("worker", 0.0) / max(tokens, 1) * 1e6, 1),
        "peak_mb": peak_mb["pss_total"],
        "peak_memory_mb": peak_mb,
        "cpu_percent": cpu,
        "seconds": round(end - start, 2),
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, int | float):
            values = [r[key] for r in runs]
            out[key] = (
                max(values)
                if key in {"cut_short", "unfinished", "run_retrying", "run_failed"}
                else statistics.median(values)
            )
    return out


async def main_async(args: argparse.Namespace, folder: Path, infra: bench.Infra) -> None:
    extra = dict(kv.split("=", 1) for kv in args.env)
    results: list[dict[str, Any]] = []
    try:
        for name in args.cases.split(","):
            (folder / name).mkdir(exist_ok=True)
            system = System(infra, folder / name, CASES[name], extra)
            await system.start()
            try:
                for c in [int(x) for x in args.clients.split(",")]:
                    runs = []
                    for i in range(args.runs):
                        r = await one_run(system, folder, c, args.load_procs, args.timeout, args.client)
                        bench.log(f"{name} C={c} run {i + 1}: {json.dumps(r)}")
                        runs.append(r)
                    results.append({"case": name, "clients": c, "median": median_of(runs), "runs": runs})
            finally:
                await system.stop()
    finally:
        infra.stop()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(
        f"\n{'case':<14}{'C':>6}{'tok/s':>9}{'first p50':>11}{'relay p50':>11}{'p99':>8}{'rate p10':>10}"
        f"{'done':>7}{'short':>7}{'unfin':>7}{'retry':>7}{'fail':>6}{'cpu s':>8}{'wrk us/tok':>11}{'peak MB':>9}"
    )
    for r in results:
        m = r["median"]
        print(
            f"{r['case']:<14}{r['clients']:>6}{m['tokens_per_s']:>9.0f}{m['first_p50_ms']:>11.0f}"
            f"{m['relay_p50_ms']:>11.1f}{m['relay_p99_ms']:>8.0f}{m['stream_rate_p10']:>10.1f}"
            f"{m['complete']:>7.0f}{m['cut_short']:>7}"
            f"{m['unfinished']:>7}{m['run_retrying']:>7}{m['run_failed']:>6}{m['server_cpu_s']:>8.1f}"
            f"{m['worker_cpu_us_per_token']:>11.1f}{m['peak_mb']:>9.0f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="proto,rg,rg-1ev,rg-2w,proto-20ms,rg-20ms,rg-20ms-1ev")
    p.add_argument("--clients", default="50,200,1000")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--load-procs", type=int, default=2)
    p.add_argument(
        "--client",
        choices=["light", "aiohttp"],
        default="light",
        help="light: raw sockets on uvloop; aiohttp: an aiohttp session on asyncio, json.loads per event",
    )
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for gateway and workers")
    p.add_argument("--output", default=str(bench.BENCH / "results" / "e2e.json"))
    bench.raise_nofile()
    folder = Path(tempfile.mkdtemp(prefix="relaygate-e2e-"))
    asyncio.run(main_async(p.parse_args(), folder, bench.Infra.start(folder)))


if __name__ == "__main__":
    main()
