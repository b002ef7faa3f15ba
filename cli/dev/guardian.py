"""Stops `relaygate dev`'s embedded servers if `relaygate dev` itself dies without stopping them.

The embedded PostgreSQL runs in a session of its own (pg_ctl daemonises it), so neither a signal to
`relaygate dev`'s process group nor its death reaches it. This small process, also in a session of
its own, waits for the dev process to end, then stops what is still running: Valkey by its pid,
PostgreSQL with a fast shutdown (SIGINT to the postmaster named in its postmaster.pid).

    python -m cli.dev.guardian DEV_PID [--postgres PGDATA] [--valkey PID]

`relaygate dev` starts it as its own child, so the guardian knows it is gone when it is re-parented.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

POLL_SECONDS = 0.2
STOP_SECONDS = 10.0


def orphaned(dev_pid: int) -> bool:
    """Whether `relaygate dev` is gone: this process was handed to another parent (a dead parent
    that nobody reaped yet is still a pid, so its pid alone cannot tell)."""
    return os.getppid() != dev_pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def stop(pid: int, sig: signal.Signals) -> None:
    """Send `sig`, then SIGKILL if the process is still there after STOP_SECONDS."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(POLL_SECONDS)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cli.dev.guardian")
    parser.add_argument("dev_pid", type=int)
    parser.add_argument("--postgres", type=Path, help="the embedded PostgreSQL's data folder")
    parser.add_argument("--valkey", type=int, help="the embedded Valkey's pid")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for `relaygate dev` is not for this
    while not orphaned(args.dev_pid):
        time.sleep(POLL_SECONDS)
    if args.valkey and alive(args.valkey):
        stop(args.valkey, signal.SIGTERM)
    if args.postgres and (pid := postmaster_pid(args.postgres)) and alive(pid):
        stop(pid, signal.SIGINT)


if __name__ == "__main__":
    main()
