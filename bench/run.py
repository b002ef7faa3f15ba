"""relaygate benchmark: gateway relay and intake figures on real processes over loopback.

    uv run --extra worker python bench/run.py [--runs 3] [--only idle,relay,...]

Starts embedded Postgres + Valkey in a temp folder (unless DATABASE_URL / REDIS_URL are
set), applies migrations, runs ONE gateway (uvicorn, restarted for every run so runs are
independent) and ONE agent worker, and drives them from separate load processes
(bench/load.py). Prints a table of medians and writes bench/results/latest.json.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from cli.dev.embedded import EmbeddedPostgres, EmbeddedValkey, free_port  # noqa: E402
from common.platform import db  # noqa: E402
from common.platform.credentials import mint_token  # noqa: E402
from common.platform.keys import stream_key  # noqa: E402
from common.platform.settings import Settings  # noqa: E402

# The benchmarks drive one user far past the per-user limits on purpose.
UNLIMITED = {
    name: "0"
    for name in (
        "RATE_LIMIT_USER_PER_MINUTE",
        "RATE_LIMIT_TENANT_PER_MINUTE",
        "RATE_LIMIT_INTEGRATION_PER_MINUTE",
        "MAX_RUNNING_REQUESTS_PER_USER",
        "MAX_STREAMS_PER_USER",
        "MAX_STREAMS_PER_PROCESS",
    )
}


SCENARIOS = ["idle", "relay", "latency", "first-token", "accept"]
TITLES = {
    "idle": "idle streams",
    "relay": "token relay throughput",
    "latency": "relay latency",
    "first-token": "first token",
    "accept": "accept rate",
}


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- servers


@dataclass
class Infra:
    folder: Path
    database_url: str
    redis_url: str
    postgres: EmbeddedPostgres | None = None
    valkey: EmbeddedValkey | None = None

    @classmethod
    def start(cls, folder: Path) -> Infra:
        database_url = os.environ.get("DATABASE_URL", "")
        redis_url = os.environ.get("REDIS_URL", "")
        postgres = valkey = None
        if not database_url:
            postgres = EmbeddedPostgres(folder / "servers", delete_on_stop=True)
            postgres.ensure_database()
            database_url = postgres.url
        if not redis_url:
            valkey = EmbeddedValkey(folder / "servers" / "valkey", persistent=False)
            redis_url = valkey.url
        asyncio.run(db.migrate(database_url))
        return cls(folder, database_url, redis_url, postgres, valkey)

    def stop(self) -> None:
        if self.valkey:
            self.valkey.stop()
        if self.postgres:
            self.postgres.stop()

    def server_processes(self) -> dict[str, list[psutil.Process]]:
        """Valkey and Postgres processes (embedded only), for CPU accounting."""
        found: dict[str, list[psutil.Process]] = {}
        if self.valkey:
            with contextlib.suppress(psutil.Error):
                found["valkey"] = [psutil.Process(self.valkey.process.pid)]
        if self.postgres:
            marker = str((self.folder / "servers" / "pg").resolve())
            for proc in psutil.process_iter(["name", "cmdline"]):
                with contextlib.suppress(psutil.Error):
                    if proc.info["name"] == "postgres" and any(marker in a for a in proc.info["cmdline"] or []):
                        found["postgres"] = [proc, *proc.children(recursive=True)]
                        break
        return found


@dataclass
class Stack:
    infra: Infra
    folder: Path
    secret: str
    extra_env: dict[str, str]
    port: int = 0
    gateway: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "QUEUE_", "STREAM_"))}
        env.update(
            {
                "DATABASE_URL": self.infra.database_url,
                "REDIS_URL": self.infra.redis_url,
                "JWT_SECRET_KEY": self.secret,
                "PYTHONUNBUFFERED": "1",
                **UNLIMITED,
            }
        )
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        path = self.folder / f"{name}-{len(self.logs)}.log"
        self.logs.append(path)
        with path.open("wb") as out:
            return subprocess.Popen(
                args, env=self.env(), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=raise_nofile
            )

    async def start_gateway(self) -> None:
        self.port = self.port or free_port()
        self.gateway = self._spawn(
            "gateway",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--backlog",
                "4096",
                "--timeout-graceful-shutdown",
                "5",
            ],
        )
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.gateway.poll() is not None:
                    raise RuntimeError(f"gateway exited; see {self.logs[-1]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{self.port}/health", timeout=1)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"gateway did not become healthy; see {self.logs[-1]}")

    async def stop_gateway(self) -> None:
        await _terminate(self.gateway, 15)
        self.gateway = None

    async def start_worker(self) -> None:
        if self.worker and self.worker.poll() is None:
            return
        self.worker = self._spawn("worker", [sys.executable, "-m", "cli.main", "worker"])
        log_path = self.logs[-1]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise RuntimeError(f"worker exited; see {log_path}")
            if b"model layer ready" in log_path.read_bytes():
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"worker did not become ready; see {log_path}")

    async def stop_worker(self) -> None:
        await _terminate(self.worker, 20)
        self.worker = None

    def token(self, user_id: str, tenant_id: str) -> str:
        return mint_token(Settings(jwt_secret_key=self.secret), user_id=user_id, tenant_id=tenant_id)  # type: ignore[arg-type]


async def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- load processes


class LoadProc:
    """A bench/load.py child: its stdout lines are `KIND {json}` messages."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.pid = proc.pid

    @classmethod
    async def start(cls, mode: str, cfg: dict[str, Any], folder: Path, script: str = "load.py") -> LoadProc:
        name = f"{mode}-{uuid.uuid4().hex[:6]}"
        cfg_path = folder / f"{name}.json"
        cfg_path.write_text(json.dumps(cfg))
        err = (folder / f"{name}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BENCH / script),
            mode,
            str(cfg_path),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            limit=1 << 28,
            preexec_fn=raise_nofile,
        )
        err.close()
        return cls(proc, name)

    async def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {kind} within {timeout:.0f}s")
            line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not line:
                raise RuntimeError(
                    f"{self.name} exited (rc={await self.proc.wait()}) before {kind}; "
                    f"see its log next to the bench config"
                )
            got, _, payload = line.decode().partition(" ")
            if got == kind:
                return dict(json.loads(payload))

    def stop(self) -> None:
        """Ask a client that runs until told to stop (relay/latency) to report now."""
        if self.proc.stdin and not self.proc.stdin.is_closing():
            self.proc.stdin.write(b"stop\n")

    async def wait(self) -> None:
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def results_within(loads: list[LoadProc], seconds: float) -> list[dict[str, Any]]:
    """Every load process's RESULT; those still waiting after `seconds` are told to report now."""
    done = asyncio.gather(*(lp.expect("RESULT", 60) for lp in loads))
    try:
        return await asyncio.wait_for(asyncio.shield(done), seconds)
    except TimeoutError:
        for lp in loads:
            lp.stop()
        return await done


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts) if items[i::parts]]


# --------------------------------------------------------------------------- measurement helpers


class CpuWindow:
    """CPU seconds of the bench's processes over a window, as % of one core.

    Processes are listed again at the end, so ones started inside the window (Postgres backends of
    a growing pool) count from zero; ones that exit inside it are lost (none do, by design).
    """

    def __init__(self, lister: Callable[[], dict[str, list[psutil.Process]]]) -> None:
        self.lister = lister
        self.start_t = 0.0
        self.start_wall = 0.0
        self.start: dict[tuple[str, int], float] = {}
        self.used: dict[str, float] = {}

    @staticmethod
    def _cpu(p: psutil.Process) -> float | None:
        try:
            t = p.cpu_times()
        except psutil.Error:
            return None
        return float(t.user + t.system)

    def _sample(self) -> dict[tuple[str, int], tuple[psutil.Process, float]]:
        out = {}
        for name, procs in self.lister().items():
            for p in procs:
                cpu = self._cpu(p)
                if cpu is not None:
                    out[(name, p.pid)] = (p, cpu)
        return out

    def begin(self) -> None:
        self.start_t = time.monotonic()
        self.start_wall = time.time()
        self.start = {k: cpu for k, (_, cpu) in self._sample().items()}
        self.start_machine = machine_busy_seconds()

    def end(self, extra_cpu_seconds: dict[str, float] | None = None) -> dict[str, int]:
        """% of one core per process group; `other` is the rest of the machine (not bench processes)."""
        elapsed = time.monotonic() - self.start_t
        used: dict[str, float] = {}
        for (name, pid), (p, cpu) in self._sample().items():
            if (name, pid) in self.start:
                before = self.start[(name, pid)]
            else:
                with contextlib.suppress(psutil.Error):
                    if p.create_time() < self.start_wall - 1:
                        continue  # existed before but was not seen: unknown start, leave it out
                before = 0.0
            used[name] = used.get(name, 0.0) + cpu - before
        used.update(extra_cpu_seconds or {})
        self.used = used
        machine = machine_busy_seconds() - self.start_machine
        out = {name: round(v / elapsed * 100) for name, v in used.items()}
        out["machine"] = round(machine / elapsed * 100)
        out["other"] = max(0, round((machine - sum(used.values())) / elapsed * 100))
        return out


def machine_busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))


def background_load(ours: Callable[[], dict[str, list[psutil.Process]]], seconds: float = 3.0) -> int:
    """CPU used over a short sample by everything except the bench's own processes, in % of one core."""
    window = CpuWindow(ours)
    window.begin()
    time.sleep(seconds)
    return window.end()["other"]


class Profiler:
    """py-spy on the gateway for one window (first run of each scenario, with --profile)."""

    def __init__(self, pyspy: str | None, out: Path) -> None:
        self.pyspy = pyspy
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None

    def begin(self, pid: int) -> None:
        if not self.pyspy:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.pyspy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.started = time.monotonic()

    def end(self) -> None:
        if not self.proc:
            return
        elapsed = time.monotonic() - self.started
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.out.exists():
            summarize_profile(self.out, elapsed * 250)


def summarize_profile(path: Path, expected_samples: float) -> None:
    """Self and inclusive sample shares per function of a py-spy raw (collapsed) profile."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        # The first frame names the process/thread; drop line numbers to aggregate per function.
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]]
        if frames:
            own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [
        f"{total} samples while busy of ~{expected_samples:.0f} taken "
        f"(process busy ~{100 * total / max(expected_samples, 1):.0f}% of one core)",
        "",
        "self:",
    ]
    lines += [f"{100 * n / max(total, 1):5.1f}%  {f}" for f, n in own.most_common(30)]
    lines += ["", "inclusive:"]
    lines += [f"{100 * n / max(total, 1):5.1f}%  {f}" for f, n in incl.most_common(60)]
    path.with_suffix(".top.txt").write_text("\n".join(lines) + "\n")


async def gateway_redis_connections(redis: Redis, gateway_pid: int) -> dict[str, int]:
    """The gateway's connections on the Redis server: total and those reading (XREAD / blocked)."""
    ports = set()
    with contextlib.suppress(psutil.Error):
        for c in psutil.Process(gateway_pid).net_connections(kind="tcp"):
            if c.raddr and c.laddr:
                ports.add(c.laddr.port)
    clients = await redis.client_list()
    reading = total = reading_any = 0
    for c in clients:
        is_reading = c.get("cmd") in ("xread", "xreadgroup") or "b" in c.get("flags", "")
        reading_any += is_reading
        port = int(c.get("addr", ":0").rsplit(":", 1)[1])
        if port in ports:
            total += 1
            reading += is_reading
    return {"reading": reading, "total": total, "reading_on_server": reading_any}


async def redis_calls(redis: Redis) -> Counter[str]:
    """Commands the Redis server has executed so far, by name (INFO commandstats)."""
    stats = await redis.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def per_request(before: Counter[str], after: Counter[str], requests: int) -> dict[str, float]:
    diff = after - before
    diff.pop("info", None)
    out = {"total": round(sum(diff.values()) / max(requests, 1), 2)}
    out.update({k: round(v / max(requests, 1), 2) for k, v in diff.most_common(8)})
    return out


# --------------------------------------------------------------------------- scenarios


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack, folder: Path) -> None:
        self.args = args
        self.stack = stack
        self.folder = folder
        self.conn: asyncpg.Connection | None = None
        self.redis: Redis | None = None

    async def open(self) -> None:
        self.conn = await asyncpg.connect(self.stack.infra.database_url)
        self.redis = Redis.from_url(self.stack.infra.redis_url, decode_responses=True)

    async def close(self) -> None:
        if self.conn:
            await self.conn.close()
        if self.redis:
            await self.redis.aclose()

    def principal(self, scenario: str, run: int) -> tuple[str, str, str]:
        tenant = f"bench-{scenario}-{run}-{uuid.uuid4().hex[:6]}"
        user = f"user-{uuid.uuid4().hex[:6]}"
        return tenant, user, self.stack.token(user, tenant)

    async def insert_sessions(self, tenant: str, user: str, n: int) -> list[str]:
        assert self.conn is not None
        rows = await self.conn.fetch(
            "INSERT INTO request_sessions (session_id, tenant_id, user_id, integration_type, expires_at)"
            " SELECT gen_random_uuid(), $1, $2, 'web', now() + interval '1 day' FROM generate_series(1, $3)"
            " RETURNING session_id::text",
            tenant,
            user,
            n,
        )
        return [r["session_id"] for r in rows]

    async def post_sessions(self, token: str, n: int) -> list[str]:
        sem = asyncio.Semaphore(20)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.stack.port}", timeout=30, headers={"Authorization": f"Bearer {token}"}
        ) as client:

            async def one() -> str:
                async with sem:
                    r = await client.post("/api/v1/sessions", json={"integration_type": "web"})
                    r.raise_for_status()
                    return str(r.json()["session_id"])

            return list(await asyncio.gather(*(one() for _ in range(n))))

    def cpu_window_lister(self) -> Callable[[], dict[str, list[psutil.Process]]]:
        def lister() -> dict[str, list[psutil.Process]]:
            procs: dict[str, list[psutil.Process]] = {}
            for name, proc in (("gateway", self.stack.gateway), ("worker", self.stack.worker)):
                if proc is not None and proc.poll() is None:
                    with contextlib.suppress(psutil.Error):
                        procs[name] = [psutil.Process(proc.pid)]
            procs.update(self.stack.infra.server_processes())
            return procs

        return lister

    def cpu_window(self) -> CpuWindow:
        return CpuWindow(self.cpu_window_lister())

    def profiler(self, scenario: str, run: int) -> Profiler:
        pyspy = self.args.profile if run == 1 else None
        return Profiler(pyspy, BENCH / "results" / f"profile-{scenario}.txt")

    def load_procs(self) -> int:
        return max(1, int(self.args.load_procs))

    async def stream_clients(self, mode: str, token: str, sessions: list[str], **cfg: Any) -> list[LoadProc]:
        """Load processes that each open one SSE stream per session of their share."""
        return [
            await LoadProc.start(
                mode,
                {
                    "port": self.stack.port,
                    "token": token,
                    "sessions": part,
                    "open_concurrency": self.args.open_concurrency,
                    **cfg,
                },
                self.folder,
            )
            for part in split(sessions, self.load_procs())
        ]

    # -- 1. idle streams
    async def idle(self, run: int) -> dict[str, Any]:
        a = self.args
        tenant, user, token = self.principal("idle", run)
        sessions = await self.insert_sessions(tenant, user, a.streams)
        gw = psutil.Process(self.stack.gateway.pid)  # type: ignore[union-attr]
        rss_start = gw.memory_info().rss / 2**20
        opening = self.cpu_window()
        opening.begin()
        loads = await self.stream_clients("idle", token, sessions, hold=a.hold)
        held_info = [await lp.expect("HELD", 300 + a.streams / 20) for lp in loads]
        opening_cpu = opening.end({"load": sum(h["cpu_s"] for h in held_info)})
        opened = sum(h["opened"] for h in held_info)
        window = self.cpu_window()
        window.begin()
        prof = self.profiler("idle", run)
        prof.begin(gw.pid)
        # Sample while every stream is open: RSS (max) and the gateway's Redis connections.
        rss = 0.0
        redis_conns: dict[str, int] = {}
        deadline = time.monotonic() + a.hold * 0.8
        while time.monotonic() < deadline:
            rss = max(rss, gw.memory_info().rss / 2**20)
            conns = await gateway_redis_connections(self.redis, gw.pid)  # type: ignore[arg-type]
            if conns["reading"] >= redis_conns.get("reading", -1):
                redis_conns = conns
            await asyncio.sleep(1)
        prof.end()
        cpu = window.end()
        results = [await lp.expect("RESULT", a.hold + 60) for lp in loads]
        for lp in loads:
            await lp.wait()
        held = sum(r["held"] for r in results)
        failed: Counter[str] = Counter()
        for r in results:
            failed.update(r["failed"])
        return {
            "figures": {
                "streams held": held,
                "Redis reading conns": redis_conns.get("reading", 0),
                "gateway RSS MB": round(rss, 1),
            },
            "details": {
                "opened": opened,
                "open_failures": dict(failed),
                "open_seconds": max(h["open_seconds"] for h in held_info),
                "gateway_cpu_ms_per_open": round(opening.used["gateway"] / max(opened, 1) * 1e3, 2),
                "cpu_percent_while_opening": opening_cpu,
                "gateway_redis_connections": redis_conns,
                "rss_start_mb": round(rss_start, 1),
                "gateway_kb_per_stream": round((rss - rss_start) * 1024 / max(held, 1), 1),
                "cpu_percent_while_idle": cpu,
            },
        }

    # -- 2. token relay throughput
    async def relay(self, run: int) -> dict[str, Any]:
        a = self.args
        tenant, user, token = self.principal("relay", run)
        sessions = await self.insert_sessions(tenant, user, a.relay_clients)
        loads = await self.stream_clients("relay", token, sessions, timeout=120)
        ready = [await lp.expect("READY", 180) for lp in loads]
        await asyncio.sleep(0.5)
        window = self.cpu_window()
        window.begin()
        prof = self.profiler("relay", run)
        prof.begin(self.stack.gateway.pid)  # type: ignore[union-attr]
        writer = await LoadProc.start(
            "write-burst",
            {
                "redis_url": self.stack.infra.redis_url,
                "keys": [stream_key(s, a.buckets) for s in sessions],
                "tokens": a.relay_tokens,
                "maxlen": 10_000,
                "batch": 1000,
            },
            self.folder,
        )
        wrote = await writer.expect("RESULT", 300)
        await writer.wait()
        # Every client normally sees its `done` within moments of the last write; give it a bound.
        results = await results_within(loads, 30)
        prof.end()
        cpu = window.end(
            {
                "load": sum(r["cpu_s"] - w["cpu_s"] for r, w in zip(results, ready, strict=True)),
                "writer": wrote["cpu_s"],
            }
        )
        for lp in loads:
            await lp.wait()
        tokens = sum(r["tokens"] for r in results)
        first = min(r["first"] for r in results if r["first"]) if tokens else 0.0
        last = max(r["last"] for r in results) if tokens else 0.0
        rate = tokens / (last - first) if last > first else 0.0
        expected = a.relay_tokens * sum(r["opened"] for r in ready)
        return {
            "figures": {"token events/s": round(rate)},
            "details": {
                "clients": sum(r["opened"] for r in ready),
                "tokens_received": tokens,
                "tokens_expected": expected,
                "relay_seconds": round(last - first, 3),
                "clients_done": sum(r["done"] for r in results),
                "closed_early": sum(r["closed_early"] for r in results),
                "writer": wrote,
                "gateway_cpu_us_per_event": round(window.used["gateway"] / max(tokens, 1) * 1e6, 1),
                "cpu_percent": cpu,
            },
        }

    # -- 3. relay latency
    async def latency(self, run: int) -> dict[str, Any]:
        a = self.args
        tenant, user, token = self.principal("latency", run)
        sessions = await self.insert_sessions(tenant, user, a.latency_streams)
        loads = await self.stream_clients(
            "latency", token, sessions, timeout=a.latency_seconds + 120, warmup_seq=int(a.latency_rate)
        )
        ready = [await lp.expect("READY", 180) for lp in loads]
        await asyncio.sleep(0.5)
        window = self.cpu_window()
        window.begin()
        prof = self.profiler("latency", run)
        prof.begin(self.stack.gateway.pid)  # type: ignore[union-attr]
        writer = await LoadProc.start(
            "write-paced",
            {
                "redis_url": self.stack.infra.redis_url,
                "keys": [stream_key(s, a.buckets) for s in sessions],
                "rate": a.latency_rate,
                "seconds": a.latency_seconds,
                "maxlen": 10_000,
            },
            self.folder,
        )
        wrote = await writer.expect("RESULT", a.latency_seconds + 120)
        await writer.wait()
        prof.end()
        results = await results_within(loads, 20)
        cpu = window.end(
            {
                "load": sum(r["cpu_s"] - w["cpu_s"] for r, w in zip(results, ready, strict=True)),
                "writer": wrote["cpu_s"],
            }
        )
        for lp in loads:
            await lp.wait()
        samples = [s for r in results for s in r["samples_ms"]]
        return {
            "figures": {"p50 ms": round(percentile(samples, 0.50), 2), "p99 ms": round(percentile(samples, 0.99), 2)},
            "details": {
                "streams": sum(r["opened"] for r in ready),
                "samples": len(samples),
                "tokens_received": sum(r["tokens"] for r in results),
                "p90_ms": round(percentile(samples, 0.90), 2),
                "p999_ms": round(percentile(samples, 0.999), 2),
                "max_ms": round(max(samples), 2) if samples else None,
                "writer": wrote,
                "gateway_cpu_us_per_event": round(
                    window.used["gateway"] / max(sum(r["tokens"] for r in results), 1) * 1e6, 1
                ),
                "cpu_percent": cpu,
            },
        }

    # -- 4. first token
    async def first_token(self, run: int) -> dict[str, Any]:
        a = self.args
        await self.stack.start_worker()
        _, _, token = self.principal("first", run)
        sessions = await self.post_sessions(token, a.first_token_requests)
        load = await LoadProc.start(
            "first-token", {"port": self.stack.port, "token": token, "sessions": sessions, "tokens": 20}, self.folder
        )
        window = self.cpu_window()
        window.begin()
        calls = await redis_calls(self.redis)  # type: ignore[arg-type]
        prof = self.profiler("first-token", run)
        prof.begin(self.stack.gateway.pid)  # type: ignore[union-attr]
        worker_prof = self.profiler("first-token-worker", run)
        worker_prof.begin(self.stack.worker.pid)  # type: ignore[union-attr]
        r = await load.expect("RESULT", 60 + a.first_token_requests * 2)
        prof.end()
        worker_prof.end()
        cpu = window.end({"load": r["cpu_s"]})
        calls_after = await redis_calls(self.redis)  # type: ignore[arg-type]
        await load.wait()
        first, headers, total = r["first_ms"], r["headers_ms"], r["total_ms"]
        return {
            "figures": {"p50 ms": round(percentile(first, 0.5), 1)},
            "details": {
                "requests": len(first),
                "failed": r["failed"],
                "first_token_p90_ms": round(percentile(first, 0.9), 1),
                "first_token_p99_ms": round(percentile(first, 0.99), 1),
                "accepted_headers_p50_ms": round(percentile(headers, 0.5), 1),
                "done_p50_ms": round(percentile(total, 0.5), 1),
                "breakdown_p50_ms": {k: round(percentile(v, 0.5), 1) for k, v in r["segments_ms"].items()},
                "redis_commands_per_request": per_request(calls, calls_after, len(first)),
                "gateway_cpu_ms_per_request": round(window.used["gateway"] / max(len(first), 1) * 1e3, 2),
                "worker_cpu_ms_per_request": round(window.used.get("worker", 0) / max(len(first), 1) * 1e3, 2),
                "cpu_percent": cpu,
            },
        }

    # -- 5. accept rate
    async def accept(self, run: int) -> dict[str, Any]:
        a = self.args
        if not a.accept_with_worker:
            await self.stack.stop_worker()
        else:
            await self.stack.start_worker()
        _, _, token = self.principal("accept", run)
        parts = split(list(range(a.accept_conns)), self.load_procs())
        loads = [
            await LoadProc.start(
                "accept",
                {
                    "port": self.stack.port,
                    "token": token,
                    "connections": len(part),
                    "seconds": a.accept_seconds,
                    "warmup": 1.0,
                },
                self.folder,
            )
            for part in parts
        ]
        window = self.cpu_window()
        window.begin()
        calls = await redis_calls(self.redis)  # type: ignore[arg-type]
        prof = self.profiler("accept", run)
        prof.begin(self.stack.gateway.pid)  # type: ignore[union-attr]
        results = [await lp.expect("RESULT", a.accept_seconds + 60) for lp in loads]
        prof.end()
        cpu = window.end({"load": sum(r["cpu_s"] for r in results)})
        calls_after = await redis_calls(self.redis)  # type: ignore[arg-type]
        for lp in loads:
            await lp.wait()
        accepted = sum(r["accepted"] for r in results)
        responses = sum(r["responses"] for r in results)  # warm-up included, like the CPU window
        postgres_s = window.used.get("postgres", 0.0)
        latencies = [x for r in results for x in r["latency_ms"]]
        statuses: Counter[str] = Counter()
        for r in results:
            statuses.update(r["statuses"])
        return {
            "figures": {"accepted/s": round(accepted / a.accept_seconds)},
            "details": {
                "accepted": accepted,
                "statuses": dict(statuses),
                "worker_running": a.accept_with_worker,
                "latency_p50_ms": round(percentile(latencies, 0.5), 1),
                "latency_p99_ms": round(percentile(latencies, 0.99), 1),
                "gateway_cpu_ms_per_request": round(window.used["gateway"] / max(responses, 1) * 1e3, 2),
                "postgres_cpu_ms_per_request": round(postgres_s / max(responses, 1) * 1e3, 2),
                "redis_commands_per_request": per_request(calls, calls_after, responses),
                "cpu_percent": cpu,
            },
        }


# --------------------------------------------------------------------------- report


# (scenario, figure, target text, predicate on the median)
def targets(args: argparse.Namespace) -> list[tuple[str, str, str, Any]]:
    return [
        ("idle", "streams held", f">= {args.streams}", lambda v: v >= args.streams),
        ("idle", "Redis reading conns", "<= 4", lambda v: v <= 4),
        ("idle", "gateway RSS MB", "<= 400", lambda v: v <= 400),
        ("relay", "token events/s", ">= 20000", lambda v: v >= 20_000),
        ("latency", "p50 ms", "-", None),
        ("latency", "p99 ms", "<= 25", lambda v: v <= 25),
        ("first-token", "p50 ms", "<= 50", lambda v: v <= 50),
        ("accept", "accepted/s", ">= 500", lambda v: v >= 500),
    ]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for scenario, figure, target, ok in targets(args):
        runs = [r["figures"][figure] for r in results.get(scenario, []) if figure in r.get("figures", {})]
        if not runs:
            continue
        median = statistics.median(runs)
        met = "-" if ok is None else ("yes" if ok(median) else "NO")
        rows.append(
            {
                "scenario": TITLES[scenario],
                "figure": figure,
                "target": target,
                "median": median,
                "runs": runs,
                "met": met,
            }
        )
    table = [["scenario", "figure", "target", "median", "runs", "met"]]
    table += [
        [r["scenario"], r["figure"], r["target"], fmt(r["median"]), ", ".join(fmt(v) for v in r["runs"]), r["met"]]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print()
    for i, row in enumerate(table):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    print()
    return rows


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per scenario; figures are medians (default 3)")
    p.add_argument("--only", default="", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    p.add_argument("--streams", type=int, default=5000, help="idle: concurrent idle streams (default 5000)")
    p.add_argument(
        "--open-concurrency",
        type=int,
        default=200,
        help="SSE handshakes in flight at once per load process while opening streams (default 200)",
    )
    p.add_argument("--hold", type=float, default=10.0, help="idle: seconds to hold the streams (default 10)")
    p.add_argument("--relay-clients", type=int, default=1000, help="relay: SSE clients (default 1000)")
    p.add_argument("--relay-tokens", type=int, default=200, help="relay: token events per stream (default 200)")
    p.add_argument("--latency-streams", type=int, default=500, help="latency: streams (default 500)")
    p.add_argument("--latency-rate", type=float, default=20.0, help="latency: tokens/s per stream (default 20)")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="latency: seconds of writing (default 10)")
    p.add_argument("--first-token-requests", type=int, default=200, help="first-token: requests (default 200)")
    p.add_argument("--accept-conns", type=int, default=50, help="accept: keep-alive connections (default 50)")
    p.add_argument("--accept-seconds", type=float, default=10.0, help="accept: measured seconds (default 10)")
    p.add_argument(
        "--accept-with-worker",
        action="store_true",
        help="accept: keep the agent worker running (default: stopped, gateway intake only)",
    )
    p.add_argument(
        "--load-procs",
        type=int,
        default=1,
        help="split the clients of idle/relay/latency/accept over this many load processes (default 1)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway and worker (e.g. HUB_NOTICE_KEYS=0); repeatable",
    )
    p.add_argument(
        "--profile",
        metavar="PY_SPY",
        default=None,
        help="path to a py-spy binary: profile the gateway in the first run of each scenario "
        "(bench/results/profile-<scenario>.txt and .top.txt)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before every run, wait up to this long for other processes' CPU use to drop to the busy threshold",
    )
    p.add_argument(
        "--busy-threshold",
        type=float,
        default=35,
        metavar="PERCENT",
        help="a run during which other processes used more than this %% of a core is flagged (default 35)",
    )
    p.add_argument(
        "--busy-retries",
        type=int,
        default=0,
        metavar="N",
        help="repeat a flagged run up to N times per scenario (discarded runs stay in the JSON)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp folder (logs, load configs)")
    p.add_argument("--output", default=str(BENCH / "results" / "latest.json"), help="JSON results file")
    args = p.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()] or SCENARIOS
    unknown = [s for s in args.only if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; choose from {SCENARIOS}")
    args.env = dict(e.split("=", 1) for e in args.env)
    args.buckets = int(args.env.get("STREAM_BUCKETS", os.environ.get("STREAM_BUCKETS", 256)))
    return args


Results = dict[str, list[dict[str, Any]]]


async def run_all(args: argparse.Namespace, stack: Stack, folder: Path) -> tuple[Results, Results]:
    bench = Bench(args, stack, folder)
    await bench.open()
    results: Results = {}
    discarded: Results = {}
    try:
        if any(s != "accept" for s in args.only) or args.accept_with_worker:
            await stack.start_worker()
        for scenario in [s for s in SCENARIOS if s in args.only]:
            run = 1
            retries = 0
            while run <= args.runs:
                if args.wait_quiet:
                    await asyncio.to_thread(wait_quiet, args.wait_quiet, bench.cpu_window_lister(), args.busy_threshold)
                await stack.start_gateway()
                log(f"{TITLES[scenario]}: run {run}/{args.runs}")
                started = time.monotonic()
                try:
                    result = await getattr(bench, scenario.replace("-", "_"))(run)
                except Exception as exc:  # report the failure, keep going with the other runs
                    log(f"  run {run} failed: {exc!r}")
                    result = {"figures": {}, "details": {}, "error": repr(exc)}
                finally:
                    await stack.stop_gateway()
                result["seconds"] = round(time.monotonic() - started, 1)
                figures = ", ".join(f"{k}={fmt(v)}" for k, v in result["figures"].items())
                log(f"  {figures}  ({result['seconds']}s)  {json.dumps(result['details'], default=str)[:600]}")
                cpu = result["details"].get("cpu_percent", result["details"].get("cpu_percent_while_idle", {}))
                busy = cpu.get("other", 0) > args.busy_threshold
                if busy:
                    log(f"  warning: processes outside the bench used {cpu['other']}% of a core during this run")
                if busy and retries < args.busy_retries:
                    retries += 1
                    result["discarded"] = f"machine busy: other processes used {cpu['other']}% of a core"
                    discarded.setdefault(scenario, []).append(result)
                    log(f"  discarding this run and repeating it ({retries}/{args.busy_retries})")
                    continue
                result["busy"] = busy
                results.setdefault(scenario, []).append(result)
                run += 1
    finally:
        await bench.close()
    return results, discarded


def wait_quiet(limit: float, ours: Callable[[], dict[str, list[psutil.Process]]], quiet: float = 20) -> int:
    """Sample the machine's other CPU use; with a limit, wait (bounded) until it drops to `quiet`."""
    started = time.monotonic()
    busy = background_load(ours)
    if busy > quiet and limit > 0:
        log(f"other processes use {busy}% of a core; waiting up to {limit:.0f}s for that to drop to {quiet:.0f}%")
        while busy > quiet and time.monotonic() - started < limit:
            busy = background_load(ours)
        log(f"  {'settled' if busy <= quiet else 'still busy'} after {time.monotonic() - started:.0f}s ({busy}%)")
    return busy


def main() -> None:
    args = parse_args()
    raise_nofile()
    folder = Path(tempfile.mkdtemp(prefix="relaygate-bench-"))
    log(f"working folder {folder}")
    infra = Infra.start(folder)
    log(
        f"postgres {'embedded' if infra.postgres else 'from DATABASE_URL'}, "
        f"valkey {'embedded' if infra.valkey else 'from REDIS_URL'}"
    )
    stack = Stack(infra, folder, secret="bench-" + uuid.uuid4().hex + uuid.uuid4().hex, extra_env=args.env)
    background = wait_quiet(0, infra.server_processes)
    log(f"other processes use {background}% of a core" + (" (figures will be lower)" if background > 20 else ""))
    started = time.monotonic()
    results: Results = {}
    discarded: Results = {}
    try:
        results, discarded = asyncio.run(run_all(args, stack, folder))
    finally:
        asyncio.run(stack.stop_gateway())
        asyncio.run(stack.stop_worker())
        infra.stop()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            log(f"kept {folder}")
    rows = report(args, results)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "settings": {k: v for k, v in vars(args).items() if k not in ("output",)},
                "total_seconds": round(time.monotonic() - started, 1),
                "background_cpu_percent_before": background,
                "table": rows,
                "runs": results,
                "discarded_runs": discarded,
            },
            indent=2,
            default=str,
        )
    )
    log(f"wrote {out} (total {time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
