"""CPU of an idle agent worker: `python bench/idle.py [--seconds 20]` (bench/README.md, "Idle worker").

Starts embedded Postgres + Valkey and one `python -m cli.main worker` from this checkout,
waits until it is ready and settled, then reports its CPU use (% of one core) over the window.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import run as bench


async def measure(seconds: float, folder: Path) -> None:
    infra = await asyncio.to_thread(bench.Infra.start, folder)
    stack = bench.Stack(infra, folder, "idle-" + uuid.uuid4().hex, {})
    try:
        await stack.start_worker()
        assert stack.worker is not None
        proc = psutil.Process(stack.worker.pid)
        await asyncio.sleep(3)
        before, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
        await asyncio.sleep(seconds)
        used, elapsed = sum(proc.cpu_times()[:2]) - before, time.monotonic() - t0
        print(f"idle worker: {used:.2f} CPU-s in {elapsed:.1f} s = {used / elapsed * 100:.2f} % of one core")
    finally:
        await stack.stop_worker()
        infra.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=20)
    asyncio.run(measure(p.parse_args().seconds, Path(tempfile.mkdtemp(prefix="relaygate-idle-"))))


if __name__ == "__main__":
    main()
