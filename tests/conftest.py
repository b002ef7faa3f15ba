"""Real servers for the tests: embedded PostgreSQL and Valkey (or DATABASE_URL / REDIS_URL),
and the gateway and workers as processes on loopback ports.

Tests are laid out by what they test; how a test runs is a marker set here from the fixtures it
uses (`e2e`: relaygate's own processes, `browser`: headless Chromium), so `make test-fast` can
leave those out without a list of folders."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from cli.dev.embedded import EmbeddedPostgres, EmbeddedValkey, free_port
from common.platform import db
from common.platform.credentials import mint_token
from common.platform.settings import Settings
from tests.fakes.http_target import Target
from tests.support.cluster import EmbeddedValkeyCluster

pytest_plugins = ["tests.support.app", "tests.support.browser", "tests.support.provider"]

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "test-secret-" + "x" * 32


# A test that uses one of these, directly or through its other fixtures, starts server processes or a browser.
E2E_FIXTURES = frozenset({"stack", "new_stack", "chaos_workers"})
BROWSER_FIXTURES = frozenset({"browser"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & E2E_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        if used & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)


@dataclass
class Infra:
    database_url: str
    redis_url: str


def _external_database(admin_url: str) -> str:
    """A fresh database on the server the environment names, so tests never touch its data."""
    name = f"relaygate_test_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    base, _, query = admin_url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return base + ("?" + query if query else "")


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    folder = tmp_path_factory.mktemp("servers")
    postgres = valkey = None
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    if database_url:
        database_url = _external_database(database_url)
    else:
        postgres = EmbeddedPostgres(folder, delete_on_stop=True)
        postgres.ensure_database()
        database_url = postgres.url
    if not redis_url:
        valkey = EmbeddedValkey(folder / "valkey", persistent=False)
        redis_url = valkey.url
    asyncio.run(db.migrate(database_url))
    try:
        yield Infra(database_url, redis_url)
    finally:
        if valkey:
            valkey.stop()
        if postgres:
            postgres.stop()


@pytest.fixture(scope="session")
def quiet_database_url(infra: Infra) -> str:
    """A second migrated database on the suite's Postgres that no relaygate process uses. The reapers of the
    workers running for other tests take any lapsed or abandoned row of the suite's database within half a
    second; a reaper's own tests keep their rows here."""
    url = _external_database(infra.database_url)
    asyncio.run(db.migrate(url))
    return url


@pytest.fixture
async def quiet_db(quiet_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(quiet_database_url, min_size=1, max_size=4, name="quiet")
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def redis(infra: Infra) -> AsyncIterator[Redis]:
    """A client of the suite's Valkey, closed after the test."""
    client = Redis.from_url(infra.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkeyCluster]:
    """A three-primary Valkey Cluster for the streams, started only by the tests that ask for it."""
    cluster = EmbeddedValkeyCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


def settings_for(infra: Infra, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": infra.database_url,
        "redis_url": infra.redis_url,
        "jwt_secret_key": JWT_SECRET,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Stack:
    """A gateway and its workers, each a real process; logs go to files under `folder`."""

    infra: Infra
    folder: Path
    env: dict[str, str]
    port: int = 0
    gateway: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[Path] = field(default_factory=list)
    _worker_logs: dict[int, Path] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str], preexec_fn: Callable[[], None] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.folder / f"{name}-{len(self._logs)}.log"
        self._logs.append(log)
        with log.open("wb") as out:
            return subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=preexec_fn
            )

    def start_gateway(self, nofile: int | None = None, **env: str) -> None:
        """Start the gateway; `nofile` caps its descriptors (soft and hard RLIMIT_NOFILE) as a host would."""
        self.port = self.port or free_port()
        limit = (
            None if nofile is None else functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE, (nofile, nofile))
        )
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
                "--timeout-graceful-shutdown",
                "3",
            ],
            {**self.env, **env},
            limit,
        )
        wait_until(lambda: _healthy(self.base_url), 60, f"gateway on {self.base_url} (log: {self._logs[-1]})")

    def start_worker(self, feature: str = "default", *, wait: bool = True, **env: str) -> subprocess.Popen[bytes]:
        worker = self._spawn(
            f"worker-{feature}", [sys.executable, "-m", "cli.main", "worker", "--feature", feature], {**self.env, **env}
        )
        self.workers.append(worker)
        self._worker_logs[worker.pid] = self._logs[-1]
        if wait:
            self.wait_ready(worker)
        return worker

    @contextlib.contextmanager
    def serving(self, feature: str, **env: str) -> Iterator[Stack]:
        """A worker on `feature` for the length of the block (a module's tests), stopped after it."""
        worker = self.start_worker(feature, **env)
        try:
            yield self
        finally:
            self.stop_worker(worker)

    def stop_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """SIGTERM: the worker drains (its running jobs end) and exits."""
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(15)

    def wait_ready(self, worker: subprocess.Popen[bytes]) -> None:
        log = self._worker_logs[worker.pid]
        # Ready to run replies at full speed: its model layer (litellm, where a model needs it) too.
        wait_until(
            lambda: worker.poll() is not None or "model layer ready" in log.read_text(),
            90,
            f"worker to start (log: {log})",
        )
        assert worker.poll() is None, log.read_text()

    def worker_log(self, worker: subprocess.Popen[bytes]) -> str:
        return self._worker_logs[worker.pid].read_text()

    def stop_gateway(self) -> None:
        if self.gateway and self.gateway.poll() is None:
            self.gateway.terminate()
            self.gateway.wait(15)

    def stop(self) -> None:
        self.stop_gateway()
        self.stop_workers()

    def stop_workers(self) -> None:
        """SIGTERM every worker at once; one still running 15 s later is killed."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        self.workers.clear()

    def mint(self, user_id: str, tenant_id: str) -> str:
        return mint_token(settings_for(self.infra), user_id=user_id, tenant_id=tenant_id)

    def client(self, user_id: str | None = None, tenant_id: str | None = None) -> httpx.Client:
        user_id = user_id or f"user-{uuid.uuid4().hex[:8]}"
        tenant_id = tenant_id or f"tenant-{uuid.uuid4().hex[:8]}"
        return httpx.Client(
            base_url=self.base_url, timeout=30, headers={"Authorization": f"Bearer {self.mint(user_id, tenant_id)}"}
        )

    def worker_running(self, request_id: str, timeout: float = 30) -> int:
        """The pid of the worker that started request (or flow run) `request_id` last, from the workers' logs
        (clients never see it)."""
        found: list[int] = []

        def started() -> bool:
            for worker in self.workers:
                log = self._worker_logs[worker.pid]
                lines = log.read_text().splitlines() if log.exists() else []
                if any('run started"' in line and request_id in line for line in lines):
                    found[:] = [worker.pid]
            return bool(found)

        wait_until(started, timeout, f"a worker to start {request_id}")
        return found[0]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self._logs if p.exists())


def sql(stack: Stack, query: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of one query on the stack's database, from a synchronous test."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(stack.infra.database_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stack_env(infra: Infra, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "QUEUE_", "STREAM_"))}
    env.update(
        {
            "DATABASE_URL": infra.database_url,
            "REDIS_URL": infra.redis_url,
            "JWT_SECRET_KEY": JWT_SECRET,
            "AGENTS_FILE": str(ROOT / "tests" / "agents.yaml"),
            "LEASE_SECONDS": "3",
            "HEARTBEAT_SECONDS": "0.5",
            "REAPER_INTERVAL_SECONDS": "0.5",
            "MAINTENANCE_INTERVAL_SECONDS": "1",
            # No shared worker calls a provider. With an OpenAI-compatible base set, the one `openai/*` agent
            # (tests/agents.yaml) takes the lean client, so workers start without litellm's import (~6 s of
            # CPU each here); the tests of litellm's path start their workers with LLM_FAST_PATH=off.
            "LLM_API_BASE": "http://127.0.0.1:9/v1",
            "OFFLINE_MODEL_TOKENS": "30",
            "OFFLINE_MODEL_TOKENS_PER_SECOND": "300",
            "PYTHONUNBUFFERED": "1",
            # The processes' tests drive single users hard; tests/requests/test_limits.py covers the limits.
            "RATE_LIMIT_USER_PER_MINUTE": "0",
            "MAX_RUNNING_REQUESTS_PER_USER": "0",
            "MAX_STREAMS_PER_USER": "0",
            # The local fakes that flow http tasks and webhook deliveries reach (the default refuses loopback).
            "OUTBOUND_ALLOW_HOSTS": "127.0.0.1",
        }
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The shared gateway with two default-feature workers."""
    s = Stack(infra, tmp_path_factory.mktemp("stack"), stack_env(infra))
    try:
        s.start_gateway()
        s.start_worker(wait=False)
        s.start_worker()
        yield s
    finally:
        s.stop()


@pytest.fixture
def new_stack(infra: Infra, tmp_path: Path) -> Iterator[Stack]:
    """A private stack for tests that kill or reconfigure processes (started by the test)."""
    s = Stack(infra, tmp_path, stack_env(infra))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def chaos_workers(stack: Stack) -> Callable[[], None]:
    """Call to have two ready workers on the `chaos` queue, which only the tests that kill workers use."""
    workers: list[subprocess.Popen[bytes]] = []

    def ensure_two() -> None:
        workers[:] = [w for w in workers if w.poll() is None]
        while len(workers) < 2:
            workers.append(stack.start_worker("chaos", wait=False))
        for worker in workers:
            stack.wait_ready(worker)

    return ensure_two


@pytest.fixture
def target() -> Iterator[Target]:
    """A loopback HTTP server that records what it is sent (tests/fakes/http_target.py)."""
    t = Target().start()
    try:
        yield t
    finally:
        t.stop()
