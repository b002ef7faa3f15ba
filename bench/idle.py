"""CPU of an idle relaygate: `python bench/idle.py [--seconds 20]` (bench/README.md, "Idle").

1. One agent worker (`python -m cli.main worker`) on embedded Postgres + Valkey.
2. The whole `relaygate dev` stack as a new user starts it: embedded Postgres and Valkey,
   gateway, agent worker and dispatcher, in a throwaway RELAYGATE_HOME; every process it started
   (its process tree, and the Postgres server that daemonized from it) is measured.

Each waits until ready and settled, then reports CPU use (% of one core) over the window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import run as bench

from cli.dev.command import wait_healthy

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            total += sum(proc.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


async def worker_alone(seconds: float, folder: Path) -> None:
    infra = await asyncio.to_thread(bench.Infra.start, folder)
    stack = bench.Stack(infra, folder, "idle-" + uuid.uuid4().hex, {})
    try:
        await stack.start_worker()
        assert stack.worker is not None
        proc = psutil.Process(stack.worker.pid)
        await asyncio.sleep(3)
        before, t0 = cpu_seconds([proc]), time.monotonic()
        await asyncio.sleep(seconds)
        used, elapsed = cpu_seconds([proc]) - before, time.monotonic() - t0
        print(f"idle worker: {used:.2f} CPU-s in {elapsed:.1f} s = {used / elapsed * 100:.2f} % of one core")
    finally:
        await stack.stop_worker()
        infra.stop()


def dev_stack(seconds: float, folder: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "QUEUE_", "STREAM_"))}
    env["RELAYGATE_HOME"] = str(folder / "home")
    dev = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "dev", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", [dev], timeout=180)
        time.sleep(15)  # the workers import litellm after the gateway is up
        root = psutil.Process(dev.pid)
        procs = [root, *root.children(recursive=True)]
        home = env["RELAYGATE_HOME"]  # embedded Postgres daemonizes: find it by its data folder
        servers = [
            p
            for p in psutil.process_iter(["cmdline"])
            if p.pid not in {q.pid for q in procs} and any(home in part for part in p.info["cmdline"] or [])
        ]
        procs += [q for server in servers for q in (server, *server.children(recursive=True))]
        names = sorted({p.name() for p in procs})
        before, t0 = cpu_seconds(procs), time.monotonic()
        time.sleep(seconds)
        used, elapsed = cpu_seconds(procs) - before, time.monotonic() - t0
        print(
            f"idle `relaygate dev` ({len(procs)} processes: {', '.join(names)}): {used:.2f} CPU-s in "
            f"{elapsed:.1f} s = {used / elapsed * 100:.2f} % of one core"
        )
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(60)
        except subprocess.TimeoutExpired:
            dev.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=20)
    seconds = p.parse_args().seconds
    asyncio.run(worker_alone(seconds, Path(tempfile.mkdtemp(prefix="relaygate-idle-"))))
    dev_stack(seconds, Path(tempfile.mkdtemp(prefix="relaygate-idle-dev-")))


if __name__ == "__main__":
    main()
