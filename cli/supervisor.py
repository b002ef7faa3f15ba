"""`relaygate worker --processes N`: one supervisor keeping N agent worker processes on one queue.

One Python process uses one core; N processes take jobs from the same queue (claims are
atomic, so they share it like N separate workers). A child that dies is restarted; SIGTERM or
SIGINT is passed on as SIGTERM, so each child drains its running replies, and the supervisor
exits once they have.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import click

from cli.dev.command import Child, stop_children
from common.platform.settings import Settings

OWNER = "relaygate worker"
STOP_MARGIN_SECONDS = 10  # past a child's own drain deadline, before it is killed


class _Stop(Exception):
    """SIGTERM or SIGINT reached the supervisor."""


def _stop_requested(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def child_args(feature: str | None) -> list[str]:
    """The command line of one worker process (`--processes 1`: a child never supervises)."""
    args = [sys.executable, "-m", "cli.main", "worker", "--processes", "1"]
    return [*args, "--feature", feature] if feature else args


def child_env(settings: Settings, index: int) -> dict[str, str]:
    """The supervisor's environment; each child gets its own metrics port (WORKER_METRICS_PORT + index)."""
    env = dict(os.environ)
    if settings.worker_metrics_port:
        env["WORKER_METRICS_PORT"] = str(settings.worker_metrics_port + index)
    return env


def supervise(settings: Settings, feature: str | None, processes: int) -> None:
    """Run `processes` workers until SIGTERM/SIGINT (exit 0 once they drained) or one keeps dying (exit 1)."""
    signal.signal(signal.SIGTERM, _stop_requested)
    signal.signal(signal.SIGINT, _stop_requested)
    children: list[Child] = []
    failed = False
    try:
        for index in range(processes):
            children.append(
                Child(
                    f"worker process {index + 1}",
                    child_args(feature),
                    child_env(settings, index),
                    owner=OWNER,
                    own_session=True,
                )
            )
        click.echo(
            f"{OWNER}: {processes} processes on the {settings.feature_queue(feature)} "
            f"queue (pids {', '.join(str(c.process.pid) for c in children)})",
            err=True,
        )
        while all(child.revive() for child in children):
            time.sleep(0.5)
        failed = True
    except _Stop as stop:
        click.echo(f"{OWNER}: {stop}; the worker processes finish their replies and stop", err=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_children(children, settings.worker_drain_seconds + STOP_MARGIN_SECONDS)
    if failed:
        raise click.ClickException("a worker process kept exiting; stopped them all (see the output above)")
