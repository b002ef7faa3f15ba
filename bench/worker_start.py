"""A worker's cold start: `python bench/worker_start.py [--runs 5]` (bench/README.md, "Worker start").

Starts an agent worker (`python -m cli.main worker`) on embedded Postgres + Valkey `--runs` times and
prints, per run and as medians, the seconds from spawn to "worker ready" (stores open, taking jobs)
and to "model layer ready" (litellm loaded in its background thread; a model call waits for it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench


def _seconds_until(log: Path, marker: bytes, started: float, deadline: float) -> float:
    while time.monotonic() < deadline:
        if marker in log.read_bytes():
            return time.monotonic() - started
        time.sleep(0.01)
    raise RuntimeError(f"{marker.decode()!r} not seen; see {log}")


def measure(runs: int, folder: Path) -> None:
    infra = bench.Infra.start(folder)
    stack = bench.Stack(infra, folder, "start-" + uuid.uuid4().hex, {})
    ready, model = [], []
    try:
        for n in range(runs):
            started = time.monotonic()
            worker = stack._spawn("worker", [sys.executable, "-m", "cli.main", "worker"])
            log = stack.logs[-1]
            try:
                ready.append(_seconds_until(log, b'"worker ready"', started, started + 90))
                model.append(_seconds_until(log, b'"model layer ready"', started, started + 90))
            finally:
                worker.terminate()
                worker.wait(30)
            print(f"run {n + 1}: worker ready {ready[-1]:.2f} s, model layer ready {model[-1]:.2f} s", flush=True)
    finally:
        infra.stop()
    print(f"median of {runs}: worker ready {statistics.median(ready):.2f} s (max {max(ready):.2f}), "
          f"model layer ready {statistics.median(model):.2f} s (max {max(model):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rg-start-") as tmp:
        measure(args.runs, Path(tmp))


if __name__ == "__main__":
    main()
