"""A worker under trouble loses nothing: store outages, a stalled loop, a burst, SIGTERM (issue #7)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest

from cli.sse import SseEvent
from tests.conftest import Infra, Stack, stack_env, wait_until
from tests.support.budgets import counted_today
from tests.support.proxy import proxy_postgres, proxy_redis
from tests.support.streams import done_for, offline, read_until, text_of, wait_status
from workers.offline_model import compose_reply

# The defaults of a deployed worker, not the suite's short leases: these tests are about the lease.
LEASES = {"LEASE_SECONDS": "15", "HEARTBEAT_SECONDS": "1"}


pytestmark = pytest.mark.e2e  # its own gateway (`load_gateway`) and workers


@pytest.fixture(scope="module")
def load_gateway(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(infra, tmp_path_factory.mktemp("load"), stack_env(infra))
    try:
        s.start_gateway()
        yield s
    finally:
        s.stop()


@pytest.fixture
def gateway(load_gateway: Stack) -> Iterator[Stack]:
    """The module's gateway; each test starts its own `load` workers, stopped after it."""
    env = dict(load_gateway.env)
    try:
        yield load_gateway
    finally:
        load_gateway.stop_workers()
        load_gateway.env = env


def _start(
    stack: Stack, content: str, tokens: int, rate: float, user: tuple[str, str] | None = None
) -> tuple[object, dict[str, str]]:
    c = stack.client(*(user or ()))
    r = c.post(
        "/api/v1/requests/web",
        json={"content": content, "agent_id": "load", "new_session": True, "metadata": offline(tokens, rate)},
    )
    assert r.status_code == 202, r.text
    return c, r.json()


def _whole_reply(c, r: dict[str, str], first: list[SseEvent] | None = None) -> list[SseEvent]:  # type: ignore[no-untyped-def]
    rest = read_until(
        c,
        r["stream_url"],
        done_for(r["request_id"]),
        last_event_id=first[-1].id if first else None,
        params=None if first else {"from": "0"},
        timeout=60,
    )
    return (first or []) + rest


def _kinds(events: list[SseEvent]) -> list[str]:
    return [e.event for e in events]


def _assert_completed_once(events: list[SseEvent], content: str, tokens: int) -> None:
    kinds = _kinds(events)
    assert "run.failed" not in kinds and "run.retrying" not in kinds, kinds
    assert kinds[-2:] == ["run.completed", "done"], kinds
    assert text_of(events, events[-1].json()["request_id"]) == "".join(compose_reply(content, tokens))


def test_stream_redis_cut_mid_reply_is_a_store_error_not_a_model_error(gateway: Stack) -> None:
    proxy, url = proxy_redis(gateway.infra.redis_url)
    try:
        worker = gateway.start_worker("load", STREAM_REDIS_URL=url, **LEASES)
        c, r = _start(gateway, "through a cut", 40, 20)
        first = read_until(c, r["stream_url"], lambda e: e.event == "token", params={"from": "0"})  # type: ignore[arg-type]
        proxy.cut()
        time.sleep(1.0)
        proxy.restore()
        events = _whole_reply(c, r, first)
        gateway.stop_worker(worker)  # before the proxy goes: the run's last write may still await its reply
    finally:
        proxy.close()
    _assert_completed_once(events, "through a cut", 40)


def test_postgres_blip_while_a_reply_finishes_completes_it(gateway: Stack) -> None:
    proxy, url = proxy_postgres(gateway.infra.database_url)
    try:
        worker = gateway.start_worker("load", DATABASE_URL=url, **LEASES)
        c, r = _start(gateway, "finish in a blip", 20, 40)
        first = read_until(c, r["stream_url"], lambda e: e.event == "token", params={"from": "0"})  # type: ignore[arg-type]
        proxy.cut()  # the reply ends (0.5 s) while Postgres is away: lease, finish and history wait
        time.sleep(2.0)
        proxy.restore()
        events = _whole_reply(c, r, first)
        gateway.stop_worker(worker)
    finally:
        proxy.close()
    _assert_completed_once(events, "finish in a blip", 20)
    assert wait_status(c, r["request_id"], {"completed"})["attempt"] == 1  # type: ignore[arg-type]


def test_worker_stalled_past_its_heartbeat_keeps_its_runs(gateway: Stack) -> None:
    """SIGSTOP for 5 s: five heartbeats (1 s) missed, a third of the default lease (15 s); the
    other worker's reaper watches the whole time. (The suite's short test lease is not used.)"""
    gateway.env = {k: v for k, v in gateway.env.items() if k not in ("LEASE_SECONDS", "HEARTBEAT_SECONDS")}
    for _ in range(2):
        gateway.start_worker("load", wait=False)
    for worker in gateway.workers:
        gateway.wait_ready(worker)
    c, r = _start(gateway, "stall me", 120, 20)
    first = read_until(c, r["stream_url"], lambda e: e.event == "token", params={"from": "0"})  # type: ignore[arg-type]
    pid = gateway.worker_running(r["request_id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(5)
    finally:
        os.kill(pid, signal.SIGCONT)
    events = _whole_reply(c, r, first)
    _assert_completed_once(events, "stall me", 120)


def test_burst_of_ten_times_a_workers_capacity_all_complete(gateway: Stack) -> None:
    gateway.start_worker("load", WORKER_MAX_JOBS="4", **LEASES)
    c = gateway.client()
    ids = []
    for i in range(40):
        r = c.post(
            "/api/v1/requests/web",
            json={"content": f"burst {i}", "agent_id": "load", "new_session": True, "metadata": offline(20, 0)},
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["request_id"])
    for request_id in ids:
        stored = wait_status(c, request_id, {"completed", "failed", "cancelled"}, timeout=60)
        assert (stored["status"], stored["attempt"]) == ("completed", 1), stored


def test_sigterm_lets_a_running_reply_finish(gateway: Stack) -> None:
    worker = gateway.start_worker("load", WORKER_DRAIN_SECONDS="10", **LEASES)
    c, r = _start(gateway, "finish before you go", 30, 15)
    first = read_until(c, r["stream_url"], lambda e: e.event == "token", params={"from": "0"})  # type: ignore[arg-type]
    worker.send_signal(signal.SIGTERM)
    events = _whole_reply(c, r, first)
    _assert_completed_once(events, "finish before you go", 30)
    worker.wait(20)
    assert worker.returncode is not None


def test_sigterm_hands_back_what_does_not_fit_the_grace_period(gateway: Stack) -> None:
    for _ in range(2):
        gateway.start_worker("load", wait=False, WORKER_DRAIN_SECONDS="0", **LEASES)
    for worker in gateway.workers:
        gateway.wait_ready(worker)
    user, tenant = f"user-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    counted = counted_today(gateway.infra.redis_url, tenant, user)
    c, r = _start(gateway, "take over", 60, 20, (user, tenant))
    first = read_until(c, r["stream_url"], lambda e: e.event == "token", params={"from": "0"})  # type: ignore[arg-type]
    pid = gateway.worker_running(r["request_id"])
    leaving = next(w for w in gateway.workers if w.pid == pid)
    leaving.send_signal(signal.SIGTERM)
    events = _whole_reply(c, r, first)
    retrying = [e for e in events if e.event == "run.retrying"]
    assert retrying and retrying[0].json()["attempt"] == 2, _kinds(events)
    assert _kinds(events)[-2:] == ["run.completed", "done"]
    assert text_of(events, r["request_id"]) == "".join(compose_reply("take over", 60))
    # Both attempts count against the user's budget: the one handed back and the one that finished.
    usage = wait_status(c, r["request_id"], {"completed"})["usage"]
    assert counted() == usage["input_tokens"] + usage["output_tokens"] > 60
    try:
        leaving.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not stop")
    wait_until(lambda: "run handed back" in gateway.worker_log(leaving), 5, "the hand-back to be logged")


def test_worker_processes_are_restarted_and_drain_on_sigterm(gateway: Stack) -> None:
    supervisor = gateway.start_worker("load", WORKER_PROCESSES="2", WORKER_DRAIN_SECONDS="10", **LEASES)
    log = gateway._worker_logs[supervisor.pid]

    def ready(count: int) -> bool:
        return log.read_text().count("model layer ready") >= count

    wait_until(lambda: ready(2), 90, f"two worker processes to be ready (log: {log})")
    children = psutil.Process(supervisor.pid).children()
    assert len(children) == 2, children
    children[0].kill()
    wait_until(lambda: ready(3), 90, f"the killed worker process to be replaced (log: {log})")
    now = psutil.Process(supervisor.pid).children()
    assert len(now) == 2 and children[0].pid not in {p.pid for p in now}, now
    assert "worker process 1 exited with code -9; restarting it" in log.read_text()

    c, r = _start(gateway, "finish before you go", 30, 15)
    first = read_until(c, r["stream_url"], lambda e: e.event == "token", params={"from": "0"})  # type: ignore[arg-type]
    supervisor.send_signal(signal.SIGTERM)
    _assert_completed_once(_whole_reply(c, r, first), "finish before you go", 30)
    assert supervisor.wait(40) == 0, log.read_text()[-3000:]
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in now)
