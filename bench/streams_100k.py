"""Many concurrent SSE streams on one box: gateways on a Valkey Cluster, 1 token/s per stream.

Sets everything up in a temp folder and tears it down (bench/README.md "Many streams"):
embedded Postgres, one Valkey for the queue, a 3-primary Valkey Cluster for the streams
(`STREAM_REDIS_CLUSTER=true`), `--gateways` uvicorn processes, `--client-procs` SSE client
processes (bench/streams_100k_load.py), each bound to its own 127.0.0.x source address, and
`--writer-procs` token writers (bench/streams_100k_writer.py, relaygate's own fenced
`StreamWriter.append_many`). Prints streams opened/held/dropped, relay latency p50/p99,
per-gateway RSS, descriptors and Redis connections, and CPU per event; writes
bench/results/streams_100k.json.

    .venv/bin/python bench/streams_100k.py --streams 1000
    nice -n 5 .venv/bin/python bench/streams_100k.py --streams 100000 --client-procs 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import run as bench
from redis import Redis
from run import ROOT, CpuWindow, LoadProc, Profiler, log, raise_nofile

from cli.dev.embedded import EmbeddedPostgres, EmbeddedValkey, free_port
from common.platform import db
from common.platform.credentials import mint_token
from common.platform.settings import Settings
from common.streams.hub import HUB_READER_NAME
from tests.support.cluster import EmbeddedValkeyCluster

# Kernel settings the scenario needs at 100,000 connections: (sysctl, at least, why).
KERNEL = [
    ("net/core/somaxconn", 16384, "a gateway's accept backlog is capped by it"),
    ("net/ipv4/tcp_max_syn_backlog", 16384, "half-open connections during the open burst"),
    ("net/core/netdev_max_backlog", 16384, "loopback packets queued per CPU during the open burst"),
    ("fs/file-max", 400000, "every stream is two descriptors on this box (client and gateway)"),
]
PORT_RANGE = (10000, 65000)  # ip_local_port_range: ports per (source address, gateway) 4-tuple
DESCRIPTOR_RESERVE = 600  # per process: Redis (readers, pools), Postgres, listening socket, files
BACKLOG = 16384
WRITER_WAIT = 4 * 3600.0
STREAMS_PER_USER = 50  # under the default MAX_STREAMS_PER_USER (100): the per-user limit stays on


def tune_kernel(restore: dict[Path, str]) -> dict[str, Any]:
    """Raise what is too low where /proc/sys is writable (noting the old value in `restore`); report
    each setting before and after."""
    out: dict[str, Any] = {}
    for name, wanted, why in KERNEL:
        path = Path("/proc/sys") / name
        before = int(path.read_text().split()[0])
        after, note = before, "ok"
        if before < wanted:
            try:
                path.write_text(str(wanted))
                restore[path] = str(before)
                after, note = int(path.read_text().split()[0]), "raised"
            except OSError as exc:
                note = f"too low and not writable ({exc.strerror}): {why}"
        out[name.replace("/", ".")] = {"before": before, "after": after, "note": note}
    path = Path("/proc/sys/net/ipv4/ip_local_port_range")
    lo, hi = (int(v) for v in path.read_text().split())
    note = "ok"
    if hi - lo < PORT_RANGE[1] - PORT_RANGE[0]:
        try:
            path.write_text(f"{PORT_RANGE[0]} {PORT_RANGE[1]}")
            restore[path] = f"{lo} {hi}"
            note = "widened"
        except OSError as exc:
            note = f"not writable ({exc.strerror}); each client process needs fewer streams than the range"
    out["net.ipv4.ip_local_port_range"] = {
        "before": f"{lo} {hi}",
        "after": " ".join(path.read_text().split()),
        "note": note,
    }
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out["RLIMIT_NOFILE"] = {"soft": soft, "hard": hard, "note": "per process; the hard limit cannot be raised here"}
    return out


@dataclass
class Servers:
    folder: Path
    postgres: EmbeddedPostgres
    queue: EmbeddedValkey
    cluster: EmbeddedValkeyCluster

    @classmethod
    def start(cls, folder: Path) -> Servers:
        postgres = EmbeddedPostgres(folder / "pg", delete_on_stop=True)
        postgres.ensure_database()
        queue = EmbeddedValkey(folder / "queue", persistent=False)
        cluster = EmbeddedValkeyCluster(folder / "cluster")
        asyncio.run(db.migrate(postgres.url))
        return cls(folder, postgres, queue, cluster)

    def stop(self) -> None:
        self.cluster.stop()
        self.queue.stop()
        self.postgres.stop()

    def processes(self) -> dict[str, list[psutil.Process]]:
        found = {
            "valkey-cluster": [psutil.Process(n.process.pid) for n in self.cluster.nodes],
            "valkey-queue": [psutil.Process(self.queue.process.pid)],
        }
        marker = str((self.folder / "pg").resolve())
        for proc in psutil.process_iter(["name", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if proc.info["name"] == "postgres" and any(marker in a for a in proc.info["cmdline"] or []):
                    found["postgres"] = [proc, *proc.children(recursive=True)]
                    break
        return found


@dataclass
class Gateway:
    port: int
    popen: subprocess.Popen[bytes]
    log: Path
    rss_mb: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    @property
    def proc(self) -> psutil.Process:
        return psutil.Process(self.popen.pid)

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            p = self.proc
            self.rss_mb.append(p.memory_info().rss / 2**20)
            self.fds.append(p.num_fds())


def gateway_env(servers: Servers, secret: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "QUEUE_", "STREAM_"))}
    env.update(
        {
            "DATABASE_URL": servers.postgres.url,
            "REDIS_URL": servers.queue.url,
            "STREAM_REDIS_URL": servers.cluster.url,
            "STREAM_REDIS_CLUSTER": "true",
            "JWT_SECRET_KEY": secret,
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "WARNING",
            # Six gateways share the embedded Postgres (max_connections 100); opens need one query each.
            "DB_POOL_SIZE": "8",
            # The process cap defaults to 10,000 streams; this scenario gives a gateway up to its descriptors.
            "MAX_STREAMS_PER_PROCESS": "0",
        }
    )
    env.update(extra)
    return env


async def start_gateways(n: int, env: dict[str, str], folder: Path) -> list[Gateway]:
    gateways = []
    for i in range(n):
        port = free_port()
        path = folder / f"gateway-{i}.log"
        with path.open("wb") as out:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "api.main:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-access-log",
                    "--loop",
                    "uvloop",
                    "--http",
                    "httptools",
                    "--backlog",
                    str(BACKLOG),
                    "--timeout-graceful-shutdown",
                    "5",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                preexec_fn=raise_nofile,
            )
        gateways.append(Gateway(port, popen, path))
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient() as client:
        for gw in gateways:
            while True:
                if gw.popen.poll() is not None:
                    raise RuntimeError(f"gateway exited; see {gw.log}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{gw.port}/health", timeout=2)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gateway did not become healthy; see {gw.log}")
                await asyncio.sleep(0.2)
    return gateways


async def stop_gateways(gateways: list[Gateway]) -> None:
    for gw in gateways:
        if gw.popen.poll() is None:
            gw.popen.terminate()
    deadline = time.monotonic() + 20
    for gw in gateways:
        while gw.popen.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if gw.popen.poll() is None:
            gw.popen.kill()
            gw.popen.wait()


def redis_connections(servers: Servers, gateways: list[Gateway]) -> list[dict[str, Any]]:
    """Per gateway: its connections on each cluster node (hub readers apart) and on the queue Valkey."""
    # Keyed by (local port, server port): one local port may serve connections to several servers.
    owner: dict[tuple[int, int], int] = {}
    for i, gw in enumerate(gateways):
        with contextlib.suppress(psutil.Error):
            for c in gw.proc.net_connections(kind="tcp"):
                if c.raddr and c.laddr:
                    owner[(c.laddr.port, c.raddr.port)] = i
    out: list[dict[str, Any]] = [
        {"cluster_total": 0, "readers": 0, "commands": 0, "per_node": [0] * 3, "queue": 0} for _ in gateways
    ]
    for n, node in enumerate(servers.cluster.nodes):
        with Redis(port=node.port) as r:
            for c in r.client_list():
                i = owner.get((int(c["addr"].rsplit(":", 1)[1]), node.port))
                if i is None:
                    continue
                out[i]["cluster_total"] += 1
                out[i]["per_node"][n] += 1
                out[i]["readers" if c.get("name") == HUB_READER_NAME else "commands"] += 1
    with Redis(port=servers.queue.port) as r:
        for c in r.client_list():
            i = owner.get((int(c["addr"].rsplit(":", 1)[1]), servers.queue.port))
            if i is not None:
                out[i]["queue"] += 1
    return out


async def insert_sessions(url: str, tenant: str, streams: int) -> list[tuple[str, int]]:
    """`streams` sessions, STREAMS_PER_USER per user: (session id, user index)."""
    conn = await asyncpg.connect(url)
    try:
        users = [i // STREAMS_PER_USER for i in range(streams)]
        rows = await conn.fetch(
            "INSERT INTO request_sessions (session_id, tenant_id, user_id, integration_type, expires_at)"
            " SELECT gen_random_uuid(), $1, 'user-' || u, 'web', now() + interval '1 day'"
            " FROM unnest($2::int[]) WITH ORDINALITY AS t(u, n) ORDER BY n RETURNING session_id::text, user_id",
            tenant,
            users,
        )
    finally:
        await conn.close()
    return [(r["session_id"], int(r["user_id"].removeprefix("user-"))) for r in rows]


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def check_shares(args: argparse.Namespace) -> None:
    """Each gateway and client process must stay under the per-process descriptor limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    room = hard - DESCRIPTOR_RESERVE
    for what, n in (("--gateways", args.gateways), ("--client-procs", args.client_procs)):
        if math.ceil(args.streams / n) > room:
            raise SystemExit(
                f"{args.streams} streams over {n} processes is {math.ceil(args.streams / n)} per process;"
                f" a process may open {hard} descriptors here ({room} after a reserve): raise {what}"
            )
    if args.client_procs > 250:
        raise SystemExit("--client-procs: at most 250 (one 127.0.0.x source address each)")


async def scenario(args: argparse.Namespace, servers: Servers, folder: Path, out: dict[str, Any]) -> None:
    secret = os.urandom(32).hex()
    settings = Settings(jwt_secret_key=secret, stream_buckets=int(args.env.get("STREAM_BUCKETS", 256)))  # type: ignore[arg-type]
    tenant = f"bench-100k-{uuid.uuid4().hex[:6]}"
    sessions = await insert_sessions(servers.postgres.url, tenant, args.streams)
    users = math.ceil(args.streams / STREAMS_PER_USER)
    tokens = [mint_token(settings, user_id=f"user-{u}", tenant_id=tenant) for u in range(users)]
    log(f"{args.streams} sessions of {users} users in Postgres; starting {args.gateways} gateways")
    gateways = await start_gateways(args.gateways, gateway_env(servers, secret, args.env), folder)
    clients: list[LoadProc] = []
    writers: list[LoadProc] = []
    try:
        for gw in gateways:
            gw.sample()
        out["gateway_rss_mb_start"] = [round(gw.rss_mb[-1]) for gw in gateways]
        streams = [(s, u, gateways[i % len(gateways)].port) for i, (s, u) in enumerate(sessions)]
        opened_at = time.monotonic()
        for n, share in enumerate(split(streams, args.client_procs)):
            clients.append(
                await LoadProc.start(
                    "clients",
                    {
                        "source": f"127.0.0.{n + 2}",
                        "streams": share,
                        "tokens": tokens,
                        "open_concurrency": args.open_concurrency,
                        "open_timeout": args.open_timeout,
                    },
                    folder,
                    script="streams_100k_load.py",
                )
            )
        sampling = asyncio.create_task(sample_forever(gateways))
        ready = await asyncio.gather(*(c.expect("READY", args.open_timeout * 6 + 600) for c in clients))
        out["open_seconds"] = round(time.monotonic() - opened_at, 1)
        opened = sum(r["opened"] for r in ready)
        failures: dict[str, int] = {}
        for r in ready:
            for k, v in r["open_failed"].items():
                failures[k] = failures.get(k, 0) + v
        out.update(opened=opened, open_failed=failures)
        log(f"{opened} of {args.streams} streams open in {out['open_seconds']} s; failures {failures or 'none'}")
        await asyncio.sleep(3)
        for gw in gateways:
            gw.sample()
        out["gateway_idle"] = [{"rss_mb": round(gw.rss_mb[-1]), "fds": gw.fds[-1]} for gw in gateways]
        out["redis_connections_idle"] = redis_connections(servers, gateways)
        # Clients and writers exit as soon as they are done: their CPU comes from their own reports.
        window = CpuWindow(lambda: {"gateways": [gw.proc for gw in gateways], **servers.processes()})
        request_ids = {s: str(uuid.uuid4()) for s, _ in sessions}
        profiler = Profiler(args.profile, ROOT / "bench" / "results" / "profile-streams-100k-gateway.txt")
        window.begin()
        profiler.begin(gateways[0].popen.pid)
        for share in split(sessions, args.writer_procs):
            writers.append(
                await LoadProc.start(
                    "writer",
                    {
                        "redis_url": servers.cluster.url,
                        "buckets": settings.stream_buckets,
                        "maxlen": 1000,
                        "ttl": 3600,
                        "connections": 64,
                        "rate": 1,
                        "seconds": args.seconds,
                        "ticks_per_second": args.ticks_per_second,
                        "sessions": [(s, request_ids[s]) for s, _ in share],
                    },
                    folder,
                    script="streams_100k_writer.py",
                )
            )
        writing = await asyncio.gather(*(w.expect("STARTED", 60) for w in writers))
        await asyncio.sleep(args.seconds / 2)
        out["redis_connections_busy"] = redis_connections(servers, gateways)
        # A starved machine writes slowly; a writer that fails exits, which ends the wait.
        written = await asyncio.gather(*(w.expect("RESULT", WRITER_WAIT) for w in writers))
        profiler.end()
        results = await bench.results_within(clients, 60)
        cpu = window.end(
            {
                "clients": sum(r["cpu_s"] - r0["cpu_s"] for r, r0 in zip(results, ready, strict=True)),
                "writers": sum(w["cpu_s"] - w0["cpu_s"] for w, w0 in zip(written, writing, strict=True)),
            }
        )
        cpu_seconds = dict(window.used)
        sampling.cancel()
        out["writers"] = written
        summarize(out, args, results, written, gateways, cpu, cpu_seconds)
    finally:
        for proc in clients + writers:
            proc.stop()
        for proc in clients + writers:
            await proc.wait()
        await stop_gateways(gateways)


async def sample_forever(gateways: list[Gateway]) -> None:
    while True:
        for gw in gateways:
            gw.sample()
        await asyncio.sleep(2)


def summarize(
    out: dict[str, Any],
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    written: list[dict[str, Any]],
    gateways: list[Gateway],
    cpu: dict[str, int],
    cpu_seconds: dict[str, float],
) -> None:
    relay: dict[float, int] = {}
    end_to_end: dict[float, int] = {}
    for r in results:
        for hist, name in ((relay, "relay_ms"), (end_to_end, "end_to_end_ms")):
            for ms, count in r[name]:
                hist[ms] = hist.get(ms, 0) + count
    events = sum(w["written"] for w in written)
    received = sum(r["tokens"] for r in results)
    out.update(
        held=sum(r["held"] for r in results),
        dropped=sum(r["dropped"] for r in results),
        unfinished=sum(r["unfinished"] for r in results),
        events_written=events,
        tokens_received=received,
        writer_events_per_s=sum(w["events_per_s"] for w in written),
        writer_refused=sum(w["refused"] for w in written),
        writer_late_ticks=sum(w["late_ticks"] for w in written),
        relay_ms=quantiles(relay),
        end_to_end_ms=quantiles(end_to_end),
        gateway_rss_mb_max=[round(max(gw.rss_mb)) for gw in gateways],
        gateway_fds_max=[max(gw.fds) for gw in gateways],
        cpu_percent=cpu,
        cpu_us_per_event={k: round(v / max(events, 1) * 1e6, 1) for k, v in cpu_seconds.items()},
    )
    start = out["gateway_rss_mb_start"]
    idle = out["gateway_idle"]
    share = args.streams / args.gateways
    out["gateway_kb_per_idle_stream"] = [
        round((i["rss_mb"] - s) * 1024 / share, 1) for s, i in zip(start, idle, strict=True)
    ]


def quantiles(hist: dict[float, int]) -> dict[str, float]:
    out = {f"p{int(q * 1000) / 10:g}": round(histogram_quantile(hist, q), 1) for q in (0.5, 0.9, 0.99, 0.999)}
    return out | {"max": max(hist, default=float("nan"))}


def histogram_quantile(counts: dict[float, int], q: float) -> float:
    total = sum(counts.values())
    if not total:
        return float("nan")
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= q * total:
            return value
    return max(counts)


def report(out: dict[str, Any]) -> None:
    a = out["args"]
    lines = [
        f"streams {a['streams']} on {a['gateways']} gateways, {a['client_procs']} client procs, "
        f"{a['writer_procs']} writer procs, 1 token/s for {a['seconds']} s",
        f"  opened {out.get('opened')} (failed {out.get('open_failed')}) in {out.get('open_seconds')} s; "
        f"held {out.get('held')}, dropped {out.get('dropped')}, unfinished {out.get('unfinished')}",
        f"  events written {out.get('events_written')} ({out.get('writer_events_per_s')}/s, refused "
        f"{out.get('writer_refused')}, late ticks {out.get('writer_late_ticks')}); "
        f"tokens received {out.get('tokens_received')}",
        f"  relay ms (written -> received) {out.get('relay_ms')}",
        f"  end to end ms (event ts -> received) {out.get('end_to_end_ms')}",
        f"  gateway RSS MB idle {[g['rss_mb'] for g in out.get('gateway_idle', [])]}, max "
        f"{out.get('gateway_rss_mb_max')}; KB per idle stream {out.get('gateway_kb_per_idle_stream')}",
        f"  gateway descriptors max {out.get('gateway_fds_max')}",
        f"  Redis connections per gateway (busy) {out.get('redis_connections_busy')}",
        f"  CPU % of a core {out.get('cpu_percent')}",
        f"  CPU µs per event {out.get('cpu_us_per_event')}",
    ]
    print("\n".join(lines), flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--gateways", type=int, default=6)
    p.add_argument("--seconds", type=int, default=60, help="tokens at 1/s per stream for this long")
    p.add_argument("--client-procs", type=int, default=0, help="default: one per 12,500 streams (at least 2)")
    p.add_argument("--writer-procs", type=int, default=1)
    p.add_argument("--ticks-per-second", type=int, default=10, help="writer ticks; each writes its share of streams")
    p.add_argument("--open-concurrency", type=int, default=100, help="handshakes in flight per client process")
    p.add_argument("--open-timeout", type=float, default=120.0)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="a gateway setting")
    p.add_argument("--profile", metavar="PY_SPY", help="record gateway 0 with py-spy while tokens are written")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (logs) afterwards")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "streams_100k.json")
    args = p.parse_args()
    args.client_procs = args.client_procs or max(2, math.ceil(args.streams / 12_500))
    args.env = dict(kv.split("=", 1) for kv in args.env)
    return args


def main() -> None:
    args = parse_args()
    check_shares(args)
    raise_nofile()
    os.environ["PYTHONPATH"] = str(ROOT)  # the writer imports relaygate's StreamWriter
    out: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_before": os.getloadavg(),
            "mem_total_mb": round(psutil.virtual_memory().total / 2**20),
        },
    }
    restore: dict[Path, str] = {}
    out["kernel"] = tune_kernel(restore)
    for name, k in out["kernel"].items():
        if "not writable" in str(k.get("note")):
            log(f"kernel: {name} {k}")
    folder = Path(tempfile.mkdtemp(prefix="rg-100k-"))
    log(f"servers in {folder}")
    servers = Servers.start(folder)
    try:
        asyncio.run(scenario(args, servers, folder, out))
    except BaseException as exc:
        out["error"] = repr(exc)  # what was measured before it stays in the JSON
        raise
    finally:
        servers.stop()
        for path, value in restore.items():
            path.write_text(value)
        if args.keep:
            log(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=2, default=str))
        report(out)


if __name__ == "__main__":
    main()
