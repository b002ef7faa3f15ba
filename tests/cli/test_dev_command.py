"""The newcomer's path: `relaygate dev`, `relaygate chat`, `relaygate tail`, Ctrl-C, and a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from cli.dev.embedded import free_port
from tests.conftest import ROOT, wait_until
from workers.offline_model import compose_reply

pytestmark = pytest.mark.e2e  # runs `relaygate dev` itself, not through the `stack` fixture


def _cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**_env(home)}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "REDIS_", "QUEUE_", "STREAM_", "JWT_", "RELAYGATE_"))
    }
    return {
        **env,
        "RELAYGATE_HOME": str(home),
        "OFFLINE_MODEL_TOKENS_PER_SECOND": "200",
        "OFFLINE_MODEL_TOKENS": "25",
        "PYTHONUNBUFFERED": "1",
    }


def _start_dev(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "dev", "--port", str(port)],
            env=_env(home),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_until(
        lambda: dev.poll() is not None or "Ctrl-C stops everything" in log.read_text(),
        120,
        f"relaygate dev to start (log: {log})",
    )
    assert dev.poll() is None, log.read_text()
    return dev


def _stop_dev(dev: subprocess.Popen[bytes]) -> list[psutil.Process]:
    children = psutil.Process(dev.pid).children(recursive=True)
    os.killpg(dev.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    dev.wait(60)
    return children


def test_dev_chat_tail_ctrl_c_and_restart(tmp_path: Path) -> None:
    home, port, log = tmp_path / "home", free_port(), tmp_path / "dev.log"
    dev = _start_dev(home, port, log)
    try:
        banner = log.read_text()
        assert f"http://127.0.0.1:{port}" in banner and "token" in banner and "relaygate chat" in banner
        state = json.loads((home / "dev.json").read_text())
        assert (home / "dev.json").stat().st_mode & 0o777 == 0o600
        first = _cli(home, "chat", "hello from the cli")
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == "".join(compose_reply("hello from the cli", 25))
        session = json.loads((home / "dev.json").read_text())["cli_session"]
        assert session in first.stderr
        second = _cli(home, "chat", "second turn")
        assert second.returncode == 0 and session in second.stderr
        tail = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "tail", session, "--from", "0-0"],
            env=_env(home),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tail.stdout is not None
        lines: list[str] = []

        def events() -> list[str]:
            return [line.split(" ", 2)[1] for line in lines]

        while events().count("done") < 2 and (line := tail.stdout.readline()):
            lines.append(line)
        tail.send_signal(signal.SIGINT)
        lines += tail.communicate(timeout=15)[0].splitlines()
        assert events().count("done") == 2
        bad = _cli(home, "chat", "x", "--session", "00000000-0000-0000-0000-000000000000")
        assert bad.returncode == 1 and "session not found" in bad.stderr
        for origin, allowed in (("http://localhost:3000", True), ("http://example.com", False)):
            preflight = httpx.options(
                f"{state['url']}/api/chat",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization,content-type",
                },
            )
            assert (preflight.headers.get("access-control-allow-origin") == origin) is allowed, preflight.headers
    finally:
        children = _stop_dev(dev)
    assert dev.returncode == 0, log.read_text()[-2000:]
    wait_until(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
        30,
        "every process `relaygate dev` started to exit",
    )
    # Ctrl-C reads as cleanly as the start: no traceback, no warning, and each process stops once although
    # it gets the terminal's SIGINT and then relaygate dev's SIGTERM.
    output = log.read_text()
    assert "Traceback" not in output and "warning" not in output.lower(), output[-3000:]
    assert output.count("stopping: no new jobs") == 1 and output.count("stopping: no new deliveries") == 1, output

    dev = _start_dev(home, port, tmp_path / "dev-again.log")
    try:
        again = _cli(home, "chat", "after restart")
        assert again.returncode == 0, again.stderr
        assert session in again.stderr  # the session survived the restart
        assert json.loads((home / "dev.json").read_text())["token"] != ""
        assert state["url"] == f"http://127.0.0.1:{port}"
    finally:
        _stop_dev(dev)


def test_chat_without_a_gateway_says_how_to_start_one(tmp_path: Path) -> None:
    result = _cli(tmp_path, "chat", "hello")
    assert result.returncode == 2
    assert "make dev" in result.stderr
    unreachable = _cli(tmp_path, "chat", "hello", "--url", f"http://127.0.0.1:{free_port()}", "--token", "t")
    assert unreachable.returncode == 3
    assert "cannot reach the gateway" in unreachable.stderr


def test_dev_restarts_a_dead_child_and_its_servers_do_not_outlive_it(tmp_path: Path) -> None:
    home, port, log = tmp_path / "home", free_port(), tmp_path / "dev.log"
    dev = _start_dev(home, port, log)
    try:
        children = psutil.Process(dev.pid).children()
        valkey = [c for c in children if "valkey" in c.name()]
        worker = next(c for c in children if c.cmdline()[-1:] == ["worker"])
        worker.kill()
        wait_until(
            lambda: "the worker 1 exited with code -9; restarting it" in log.read_text(),
            30,
            "relaygate dev to restart its worker",
        )
        assert dev.poll() is None
        after = _cli(home, "chat", "still here")
        assert after.returncode == 0, after.stderr + log.read_text()[-2000:]
        postmaster = psutil.Process(int((home / "pg" / "postmaster.pid").read_text().split()[0]))
        assert len(valkey) == 1 and postmaster.name() == "postgres"
        servers = [*valkey, postmaster]
    finally:
        # A SIGTERM to the whole group and a SIGKILL soon after: relaygate dev gets no time to stop its
        # servers, so its guardian must.
        os.killpg(dev.pid, signal.SIGTERM)
        time.sleep(0.5)
        os.killpg(dev.pid, signal.SIGKILL)
        dev.wait(30)
    wait_until(
        lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in servers),
        30,
        "the embedded PostgreSQL and Valkey to stop after relaygate dev was killed",
    )
