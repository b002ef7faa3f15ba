"""relaygate under faults, then every request verified: the chaos suite (run by hand, never in `make test`).

    make chaos                                    # or: nice -n 10 .venv/bin/python bench/chaos.py
    .venv/bin/python bench/chaos.py --duration 120 --clients 30 --worker-kills 10

Starts its own embedded Postgres and Valkey (AOF on), 2 gateways and 3 agent workers on loopback
(LEASE_SECONDS=4, HEARTBEAT_SECONDS=0.5), 60 clients that each follow their own session over SSE
through a random live gateway, and 6 that each start flow runs one after another and follow each
run's stream (bench/chaos_runs.py). During the run: worker kill -9s (each restarted at once), gateway
SIGTERM drains and a kill -9 (restarted on the same port), a Valkey restart and a Postgres pause
(SIGSTOP of the postmaster and its children). Then every request and every run is checked.
Prints the figures and the anomalies by kind; exits 1 on any anomaly. See bench/README.md ("Chaos").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chaos_deliveries as deliveries
import chaos_schedules
import httpx
import run as bench
from chaos_clients import GatewayClient, Pace, SessionClient, Traffic
from chaos_cluster import Cluster, Proc
from chaos_report import Anomalies, fmt_spread, log, spread
from chaos_runs import RunClient, active_runs, load_runs, verify_runs
from chaos_verify import Verifier, active_rows, catch_up, load_rows, read_stream, usage_mismatches
from pydantic import SecretStr
from redis.asyncio import Redis

from common.platform.credentials import mint_token
from common.platform.keys import run_stream_key, stream_key
from common.platform.settings import Settings

EXPECTED_CLOSE_SLACK = 2.0
READY_TIMEOUT = 300.0


def buckets(cluster: Cluster) -> int:
    """STREAM_BUCKETS as the gateways and workers see it (stream keys depend on it)."""
    return int(cluster.env().get("STREAM_BUCKETS", Settings.model_fields["stream_buckets"].default))


def plan_faults(args: argparse.Namespace, rng: random.Random) -> list[tuple[float, str]]:
    """When each fault happens, in seconds from the start: worker kills evenly spread (with jitter),
    the other faults shuffled and evenly spaced over the same window."""
    start, end = args.warmup, max(args.warmup + 1, args.duration - 10)
    span = end - start
    plan = []
    for i in range(args.worker_kills):
        gap = span / args.worker_kills
        plan.append((start + gap * (i + 0.5) + rng.uniform(-0.3, 0.3) * gap, "worker kill"))
    others = (
        ["gateway drain"] * args.gateway_drains
        + ["gateway kill"] * args.gateway_kills
        + ["valkey restart"] * args.valkey_restarts
        + ["postgres pause"] * args.postgres_pauses
        + ["postgres restart"] * args.postgres_restarts
        + ["dispatcher kill"] * args.dispatcher_kills
    )
    rng.shuffle(others)
    for j, kind in enumerate(others):
        plan.append((start + span * (j + 0.5) / len(others), kind))
    return sorted(plan)


class Faults:
    """Carries out the plan: worker kills one after another in one lane, the other faults in another.

    A fault waits, up to `--fault-wait` seconds, until it can be done as planned: no store outage
    and `--kill-min-ready` workers ready for a kill, every gateway serving for a gateway fault
    (never both down at once). Past that it is skipped and reported.
    """

    def __init__(self, cluster: Cluster, rng: random.Random, args: argparse.Namespace) -> None:
        self.cluster = cluster
        self.rng = rng
        self.args = args
        self.gateway_turn = 0
        self.skipped: Counter[str] = Counter()

    async def run(self, plan: list[tuple[float, str]], t0: float) -> None:
        kills = [p for p in plan if p[1] == "worker kill"]
        others = [p for p in plan if p[1] != "worker kill"]
        await asyncio.gather(self._lane(kills, t0), self._lane(others, t0))

    async def _lane(self, plan: list[tuple[float, str]], t0: float) -> None:
        for at, kind in plan:
            await asyncio.sleep(max(0.0, t0 + at - time.time()))
            await self.one(kind)

    async def _until(self, kind: str, ready: Callable[[], bool], why: str) -> bool:
        deadline = time.monotonic() + self.args.fault_wait
        while not ready():
            if time.monotonic() > deadline:
                self.skipped[kind] += 1
                log(f"{kind} skipped: {why} for {self.args.fault_wait:g} s")
                return False
            await asyncio.sleep(0.2)
        return True

    def _ready_workers(self) -> int:
        return sum(1 for p in self.cluster.worker_procs if p is not None and p.alive() and p.ready_at)

    async def one(self, kind: str) -> None:
        c = self.cluster
        if kind == "worker kill":
            if not await self._until(
                kind,
                lambda: not c.outages and self._ready_workers() >= self.args.kill_min_ready,
                f"fewer than {self.args.kill_min_ready} workers ready",
            ):
                return
            record = await c.kill_worker(self.rng.choice)
            assert record is not None
            log(
                f"worker kill -9: slot {record['slot']} pid {record['pid']} "
                f"({record['other_workers_ready']} other workers ready)"
            )
        elif kind in ("gateway drain", "gateway kill"):
            if not await self._until(kind, lambda: len(c.up) == c.gateways, "a gateway was not serving"):
                return
            slot = self.gateway_turn % c.gateways
            self.gateway_turn += 1
            sig = signal.SIGTERM if kind == "gateway drain" else signal.SIGKILL
            log(f"{kind}: gateway {slot}")
            record = await c.stop_gateway(slot, sig)
            log(
                f"{kind}: gateway {slot} exited after {record['exit_seconds']} s (code {record['exit_code']}), "
                f"serving again after {record['back_seconds']} s"
            )
        elif kind == "dispatcher kill":
            record = await c.kill_dispatcher(self.rng.choice)
            if record is None:
                self.skipped[kind] += 1
                log("dispatcher kill skipped: no dispatcher ready")
                return
            log(f"dispatcher kill -9: slot {record['slot']} pid {record['pid']}")
        elif kind == "valkey restart":
            log("valkey restart: stopping")
            record = await c.restart_valkey(self.args.valkey_down_seconds)
            log(f"valkey restart: back after {record['down_seconds']} s")
        elif kind == "postgres pause":
            log(f"postgres pause: SIGSTOP for {self.args.pause_seconds} s")
            record = await c.pause_postgres(self.args.pause_seconds)
            log(f"postgres pause: SIGCONT ({record['processes']} processes)")
        elif kind == "postgres restart":
            log(f"postgres restart: stopping (fast: every connection dropped) for {self.args.postgres_down_seconds} s")
            record = await c.restart_postgres(self.args.postgres_down_seconds)
            log(f"postgres restart: back after {record['down_seconds']} s")


async def progress(clients: list[SessionClient], runners: list[RunClient], cluster: Cluster, every: float = 15) -> None:
    while True:
        await asyncio.sleep(every)
        done = sum(len(c.done) for c in clients)
        runs = sum(1 for c in runners for r in c.runs if r.done_at)
        ready = sum(1 for p in cluster.worker_procs if p is not None and p.alive() and p.ready_at)
        log(
            f"{done} requests and {runs} runs done; gateways up {len(cluster.up)}/{cluster.gateways}, workers ready "
            f"{ready}/{cluster.workers}; faults {len(cluster.faults)}; anomalies so far "
            f"{sum(cluster.anomalies.counts.values())}"
        )


async def settle(
    args: argparse.Namespace,
    cluster: Cluster,
    tenant: str,
    clients: list[SessionClient],
    runners: list[RunClient],
    senders: list[asyncio.Task[None]],
) -> None:
    """After the traffic stops and every process is up again: until every turn ended and nothing is
    queued or running, for at most `--settle` seconds (a slow cold start is not a stuck request)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not cluster.all_ready() and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    deadline = time.monotonic() + args.settle
    said = 0.0
    while time.monotonic() < deadline:
        pending = sum(not t.done() for t in senders)
        unfinished = sum(len(c.open_requests()) for c in clients) + sum(c.open_runs() for c in runners)
        active = await active_rows(cluster.database_url, tenant) + await active_runs(cluster.database_url, tenant)
        if not pending and not unfinished and not active:
            return
        if time.monotonic() - said > 10:
            log(f"settling: {pending} clients waiting, {unfinished} requests or runs without done, {active} active")
            said = time.monotonic()
        await asyncio.sleep(1)
    log(f"settle period of {args.settle:g} s over; what is still open is stuck")


async def settle_deliveries(args: argparse.Namespace, cluster: Cluster, tenant: str) -> None:
    """Then until no delivery is owed (retries included), for at most `--settle` seconds."""
    deadline = time.monotonic() + args.settle
    said = 0.0
    while (left := await deliveries.owed(cluster.database_url, tenant)) and time.monotonic() < deadline:
        if time.monotonic() - said > 10:
            log(f"settling: {left} delivery steps owed")
            said = time.monotonic()
        await asyncio.sleep(1)


# What the repairs log when they make up for a process that died or a store that was away, and the
# fields that say how much each did: the chaos should make every one of them work at some point.
REPAIRS = {
    "writing endings their writer did not": ("requests",),
    "writing run endings their writer did not": ("runs",),
    "retried requests queued again: their requeue's job was lost": ("requests",),
    "retried flow runs queued again: their requeue's job was lost": ("runs",),
    "deliveries queued again": ("unqueued", "stalled", "retry"),
}


def repairs(cluster: Cluster) -> dict[str, int]:
    """How much each repair did, from every process's log: ids listed or counts given, summed."""
    done: Counter[str] = Counter()
    for proc in cluster.history:
        with contextlib.suppress(OSError):
            for line in proc.log.read_bytes().splitlines():
                if b"again" not in line and b"did not" not in line:
                    continue
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    for field in REPAIRS.get(entry.get("msg", ""), ()):
                        value = entry.get(field, 0)
                        done[f"{entry['msg']}: {field}"] += len(value) if isinstance(value, list) else int(value)
    return {k: n for k, n in done.items() if n}


def reconnects(clients: list[SessionClient], cluster: Cluster) -> dict[str, Any]:
    """Every SSE response after a client's first, by how the previous one ended; a close is expected
    when its gateway was being drained, killed or restarted at that moment."""
    causes: Counter[str] = Counter()
    for client in clients:
        for conn in client.connections[:-1]:
            expected = conn.cause == "drain" or any(
                port == conn.port and start - EXPECTED_CLOSE_SLACK <= conn.closed <= end + EXPECTED_CLOSE_SLACK
                for port, start, end in cluster.gateway_down
            )
            causes[f"{conn.cause} ({'gateway faulted' if expected else 'gateway up'})"] += 1
    return {"total": sum(causes.values()), "by_cause": dict(causes)}


def ready_times(procs: list[Proc], reason: str) -> dict[str, Any]:
    return spread([p.ready_at - p.spawned for p in procs if p.role == "worker" and p.reason == reason and p.ready_at])


def report(figures: dict[str, Any], anomalies: Anomalies) -> None:
    f = figures
    print("\n=== chaos run ===")
    print(
        f"run: {f['run']['traffic_s']} s of traffic, {f['run']['clients']} clients, {f['run']['gateways']} gateways, "
        f"{f['run']['workers']} workers, seed {f['run']['seed']}"
    )
    print("faults: " + ", ".join(f"{k} x{n}" for k, n in f["faults"]["done"].items()))
    if f["faults"]["skipped"]:
        print(f"WARNING: faults skipped (the machine is too busy for the plan): {f['faults']['skipped']}")
    r = f["requests"]
    print(
        f"requests: {r['total']} ({r['stored']} stored: {r['by_status']}; {r['retried']} retried; "
        f"{r['announced_not_stored']} announced but not stored); {r['with_anomalies']} with an anomaly"
    )
    print(f"stream entries: {f['entries']['in_streams']} in streams, {f['entries']['received']} received by clients")
    if "runs" in f:
        n = f["runs"]
        print(
            f"flow runs: {n['total']} ({n['by_status']}; {n['retried']} retried; {n['entries_received']} run entries "
            f"received); first POST -> done: {fmt_spread(n['seconds'])}"
        )
        print(f"    a retried run's last entry -> its next attempt's first: {fmt_spread(n['takeover_gap'])}")
    k = f["kill_to_next_token"]
    print(f"worker kill -> next token of an affected request ({k['affected_requests']} requests):")
    print(f"    written:  {fmt_spread(k['written'])}")
    print(f"    received: {fmt_spread(k['received'])}")
    if k["retried_without_a_token"]:
        print(f"    {k['retried_without_a_token']} requests running on a killed worker got no later token")
    print(f"retried without a worker kill: {k['retried_without_a_kill']} {k['retried_without_a_kill_examples']}")
    print(
        f"worker ready time after a kill: {fmt_spread(f['worker_ready']['after_kill'])}; "
        f"at start: {fmt_spread(f['worker_ready']['initial'])}"
    )
    print(f"turn time (first POST -> done): {fmt_spread(f['turns']['seconds'])}")
    d = f["deliveries"]
    print(
        f"deliveries: {d['delivered']} replies of {d['users']} users delivered; attempts {d['attempts_by_status']};"
        f" {d['posts_received']} POSTs received {d['posts_answered']}, {d['repeated_after_success']} repeated after"
        " a 2xx"
    )
    print(f"    completed -> delivered: {fmt_spread(d['completed_to_success'])}")
    sc = f["schedules"]
    lag = fmt_spread(sc["tick_to_request"])
    print(f"schedules: {sc['schedules']}, {sc['ticks_fired']} ticks fired; tick -> its request: {lag}")
    print(f"reconnects: {f['reconnects']['total']} {f['reconnects']['by_cause']}")
    print("repairs (from the logs): " + (", ".join(f"{k} {n}" for k, n in f["repairs"].items()) or "none"))
    print(f"http: {f['http']}")
    print(f"harness cpu: {f['run']['harness_cpu_s']} s")
    anomalies.print()


async def main_async(args: argparse.Namespace, folder: Path) -> int:
    rng = random.Random(args.seed)
    anomalies = Anomalies()
    extra = dict(kv.split("=", 1) for kv in args.env)
    cluster = Cluster(folder, args.gateways, args.workers, extra, args.drain_timeout, anomalies, args.dispatchers)
    try:
        log(f"starting servers, {args.gateways} gateways and {args.workers} workers in {folder}")
        await cluster.start()
        run = await drive(args, cluster, rng)
        log("verifying every request")
        figures = await conclude(args, cluster, run)
        report(figures, anomalies)
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=1, default=str))
        print(f"\nfigures written to {out}; logs in {folder / 'logs'}")
        if figures["kill_to_next_token"]["retried_without_a_kill"]:
            args.keep = True  # not an anomaly (nothing was lost), but its logs are what explains it
            print("logs kept: a retry no worker kill explains")
        return 1 if anomalies else 0
    finally:
        await asyncio.to_thread(cluster.stop)


@dataclass
class Run:
    """What the traffic phase leaves for the verification."""

    tenant: str
    clients: list[SessionClient]
    runners: list[RunClient]
    traffic: Traffic
    faults: Faults
    t0: float
    seconds: float
    tails: dict[str, str]
    receiver: deliveries.Receiver
    delivery_users: set[str]
    schedules: list[chaos_schedules.Schedule]


async def drive(args: argparse.Namespace, cluster: Cluster, rng: random.Random) -> Run:
    """Clients and faults until every planned fault is done and `--duration` is over, then the settle."""
    watcher = asyncio.create_task(cluster.watch(), name="watcher")
    tenant = f"chaos-{uuid.uuid4().hex[:8]}"
    settings = Settings(jwt_secret_key=SecretStr(cluster.secret))
    traffic = Traffic(cluster.anomalies)
    pace = Pace((args.tokens_min, args.tokens_max), args.rate, args.think, args.cancel_share)
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=2000, max_keepalive_connections=500))

    def token(user: str) -> str:
        return mint_token(settings, user_id=user, tenant_id=tenant)

    ports = cluster.live_ports
    clients = [
        SessionClient(i, http, ports, token(f"user-{i}"), traffic, pace, rng.randrange(2**32))
        for i in range(args.clients)
    ]
    runners = [
        RunClient(i, http, ports, token(f"runner-{i}"), tenant, traffic, rng.randrange(2**32), args.cancel_share)
        for i in range(args.run_clients)
    ]
    faults = Faults(cluster, rng, args)
    senders: list[asyncio.Task[None]] = []
    receiver = deliveries.Receiver(args.delivery_fail_share, rng.randrange(2**32))
    await receiver.start()
    subscribed = {f"user-{c.index}": c for c in clients if rng.random() < args.delivery_share}
    schedulers = [GatewayClient(i, http, ports, token(f"scheduler-{i}"), traffic, i) for i in range(args.schedules)]
    reporter = asyncio.create_task(progress(clients, runners, cluster))
    try:
        await asyncio.gather(*(c.open_session() for c in clients))
        await deliveries.subscribe(subscribed, receiver)
        log(f"{len(subscribed)} users deliver their replies to a webhook ({receiver.url('<user>')})")
        schedules = await chaos_schedules.create(schedulers)
        log(f"{len(schedules)} schedules fire every minute")
        log(f"{len(clients)} clients following their sessions; faults for {args.duration:g} s")
        stop = asyncio.Event()
        t0 = time.time()
        senders = [asyncio.create_task(c.converse(stop), name=f"sender-{c.index}") for c in clients]
        senders += [asyncio.create_task(c.converse(stop), name=f"runner-{c.index}") for c in runners]
        fault_task = asyncio.create_task(faults.run(plan_faults(args, rng), t0))
        done, _ = await asyncio.wait([fault_task, watcher], return_when=asyncio.FIRST_COMPLETED)
        if watcher in done:
            watcher.result()
        await fault_task
        await asyncio.sleep(max(0.0, t0 + args.duration - time.time()))
        stop.set()
        await chaos_schedules.disable(schedules)
        seconds = time.time() - t0
        log(f"traffic stopped after {seconds:.0f} s; waiting for every request to end")
        await settle(args, cluster, tenant, clients, runners, senders)
        await settle_deliveries(args, cluster, tenant)
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        redis = Redis.from_url(cluster.redis_url)
        try:
            tails = await catch_up(redis, clients, buckets(cluster), timeout=20)
        finally:
            await redis.aclose()
        if watcher.done():
            watcher.result()
        return Run(tenant, clients, runners, traffic, faults, t0, seconds, tails, receiver, set(subscribed), schedules)
    finally:
        cancels = [t for c in [*clients, *runners] for t in c.cancels]
        others = [watcher, reporter, *senders, *(c.reader for c in clients if c.reader), *cancels]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await http.aclose()
        await receiver.stop()


async def conclude(args: argparse.Namespace, cluster: Cluster, run: Run) -> dict[str, Any]:
    """Every request verified; the figures of the run."""
    anomalies = cluster.anomalies
    runs = await load_runs(cluster.database_url, run.tenant)
    rows = await load_rows(cluster.database_url, run.tenant)
    redis = Redis.from_url(cluster.redis_url)
    try:
        # The agent tasks' and the schedules' requests are in sessions no session client follows.
        sessions = {c.session_id for c in run.clients} | {r["session_id"] for r in runs.values()}
        sessions |= {row["session_id"] for row in rows.values()}
        streams = {s: await read_stream(redis, stream_key(s, buckets(cluster))) for s in sessions}
        run_streams = {r: await read_stream(redis, run_stream_key(r, buckets(cluster))) for r in runs}
    finally:
        await redis.aclose()
    verifier = Verifier(anomalies)
    cancelled = {t.request_id for c in run.clients for t in c.turns if t.cancel_sent}
    cancelled |= {
        runs[r.run_id]["session_id"] for c in run.runners for r in c.runs if r.cancel_sent and r.run_id in runs
    }
    by_request = verifier.requests(streams, rows, cancelled)
    replies = {r: row["response_content"] for r, row in rows.items() if row["status"] == "completed"}
    tokens = int(cluster.env().get("OFFLINE_MODEL_TOKENS", Settings().offline_model_tokens))
    verify_runs(verifier, run.runners, run_streams, runs, replies, tokens)
    verifier.clients(run.clients, streams, run.tails)
    verifier.kills(cluster.kills, by_request, run.clients)
    turns = [t for c in run.clients for t in c.turns]
    for turn in turns:
        if not turn.request_id:
            anomalies.add("never_accepted", content=turn.content, tries=turn.post_tries)
        elif turn.request_id not in rows and turn.request_id not in by_request:
            anomalies.add("accepted_then_lost", request_id=turn.request_id)
    delivered = await deliveries.verify(anomalies, cluster.database_url, run.tenant, run.delivery_users, run.receiver)
    scheduled = await chaos_schedules.verify(anomalies, cluster.database_url, run.schedules)
    for mismatch in await usage_mismatches(cluster.database_url, run.tenant):
        anomalies.add("usage_rollup_mismatch", **mismatch)
    for proc in cluster.worker_procs:
        if proc is not None and proc.alive() and not proc.ready_at and time.time() - proc.spawned > 60:
            anomalies.add("worker_never_ready", slot=proc.slot, pid=proc.pid, log=proc.tail())
    verifier.figures["requests"]["with_anomalies"] = len(anomalies.requests)
    for fault in cluster.faults:
        new: Proc | None = fault.get("replacement")
        if new is not None and new.ready_at:
            fault["replacement_ready_s"] = round(new.ready_at - new.spawned, 2)
    timeline = [
        {k: (round(v - run.t0, 1) if k == "at" else v) for k, v in f.items() if k not in ("log", "replacement")}
        for f in sorted(cluster.faults, key=lambda f: f["at"])
    ]
    return {
        "run": {
            "traffic_s": round(run.seconds),
            "clients": args.clients,
            "gateways": args.gateways,
            "workers": args.workers,
            "seed": args.seed,
            "folder": str(cluster.folder),
            "env": cluster.env_summary(),
            "harness_cpu_s": round(time.process_time(), 1),
        },
        "faults": {
            "done": dict(Counter(f["kind"] for f in cluster.faults)),
            "skipped": dict(run.faults.skipped),
            "timeline": timeline,
        },
        **verifier.figures,
        "deliveries": delivered,
        "schedules": scheduled,
        "worker_ready": {
            "after_kill": ready_times(cluster.history, "kill"),
            "initial": ready_times(cluster.history, "initial"),
        },
        "turns": {"sent": len(turns), "seconds": spread([t.done_at - t.posted_at for t in turns if t.done_at])},
        "reconnects": reconnects(run.clients, cluster),
        "repairs": repairs(cluster),
        "http": dict(run.traffic.counts),
        "anomalies": anomalies.as_dict(),
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=240, help="seconds of traffic with faults")
    p.add_argument("--warmup", type=float, default=15, help="seconds before the first fault")
    p.add_argument("--clients", type=int, default=60)
    p.add_argument("--run-clients", type=int, default=6, help="clients starting flow runs one after another")
    p.add_argument(
        "--cancel-share", type=float, default=0.1, help="share of requests and runs cancelled 0.1-4 s after accepted"
    )
    p.add_argument("--gateways", type=int, default=2)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--worker-kills", type=int, default=20)
    p.add_argument("--schedules", type=int, default=6, help="users with a schedule that fires every minute")
    p.add_argument("--dispatchers", type=int, default=2)
    p.add_argument("--dispatcher-kills", type=int, default=4)
    p.add_argument("--delivery-share", type=float, default=0.25, help="of users whose replies go to a webhook")
    p.add_argument(
        "--delivery-fail-share", type=float, default=0.2, help="of webhook POSTs the receiver answers 503 (retried)"
    )
    p.add_argument("--gateway-drains", type=int, default=3)
    p.add_argument("--gateway-kills", type=int, default=1)
    p.add_argument("--valkey-restarts", type=int, default=1)
    p.add_argument("--postgres-pauses", type=int, default=1)
    p.add_argument(
        "--postgres-restarts",
        type=int,
        default=0,
        help="Postgres stopped (fast shutdown) and started again on the same data: every connection drops",
    )
    p.add_argument(
        "--kill-min-ready",
        type=int,
        default=2,
        help="workers that must be ready (the victim included) before a kill: 2 keeps one serving, so a "
        "kill measures takeover; 1 also kills the last one (recovery then waits for a cold start)",
    )
    p.add_argument(
        "--fault-wait",
        type=float,
        default=180,
        help="max seconds a fault waits until it can be done as planned (then it is skipped)",
    )
    p.add_argument("--pause-seconds", type=float, default=5, help="how long Postgres stays SIGSTOPped")
    p.add_argument("--valkey-down-seconds", type=float, default=2, help="how long Valkey stays stopped")
    p.add_argument("--postgres-down-seconds", type=float, default=8, help="how long Postgres stays stopped")
    p.add_argument("--drain-timeout", type=float, default=10, help="the gateways' --timeout-graceful-shutdown")
    p.add_argument("--tokens-min", type=int, default=30, help="reply length range (offline model tokens)")
    p.add_argument("--tokens-max", type=int, default=90)
    p.add_argument("--rate", type=float, default=20, help="offline model tokens per second")
    p.add_argument("--think", type=float, default=1.0, help="max seconds a client waits between requests")
    p.add_argument(
        "--settle",
        type=float,
        default=90,
        help="max seconds after the traffic stops for every request to end (then it is stuck)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for gateways and workers")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (always kept when anomalies are found)")
    p.add_argument("--output", default=str(bench.BENCH / "results" / "chaos.json"))
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    return args


def main() -> None:
    args = parse_args()
    bench.raise_nofile()
    folder = Path(tempfile.mkdtemp(prefix="relaygate-chaos-"))
    code = 2
    with contextlib.suppress(KeyboardInterrupt):
        with asyncio.Runner() as runner:
            runner.get_loop().add_signal_handler(signal.SIGTERM, lambda: signal.raise_signal(signal.SIGINT))
            code = runner.run(main_async(args, folder))
    if code == 0 and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
