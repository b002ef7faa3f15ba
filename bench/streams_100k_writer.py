"""The token source of bench/streams_100k.py (not meant to be run by hand).

`python bench/streams_100k_writer.py writer CONFIG.json` feeds its share of the sessions through
relaygate's own `StreamWriter.append_many` on the Redis Cluster: the fenced append path an agent
worker's token flushes take (fence check, XADD with MAXLEN, EXPIRE, fence raise), one call per
tick for the tick's streams, which the writer splits into one script call per bucket, all at once.
Every stream gets `rate` token events per second for `seconds`, its streams spread evenly over
`ticks_per_second` ticks; then each stream's `done` (which closes its request's fence). Each
event's `ts` is taken just before its append: the clients measure relay latency from it.
Reports on stdout (`KIND {json}`, with the process's CPU seconds): `STARTED` when it starts writing,
`RESULT`: events written, the achieved rate, late ticks, refusals.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import orjson
import uvloop
from load import emit, raise_nofile

from common.streams.protocol import Event, connect
from common.streams.writer import StreamWriter

IN_FLIGHT = 4  # ticks whose appends may overlap when one takes longer than a tick


async def main(cfg: dict[str, Any]) -> None:
    redis = connect(cfg["redis_url"], cluster=True, max_connections=cfg["connections"])
    writer = StreamWriter(redis, buckets=cfg["buckets"], maxlen=cfg["maxlen"], ttl_seconds=cfg["ttl"])
    sessions: list[tuple[str, str]] = [(s, r) for s, r in cfg["sessions"]]
    per_second = cfg["ticks_per_second"]
    groups = [sessions[g::per_second] for g in range(per_second)]
    tick = 1.0 / per_second / cfg["rate"]
    ticks = int(cfg["seconds"] * per_second * cfg["rate"])
    seqs = {s: 0 for s, _ in sessions}
    slots = asyncio.Semaphore(IN_FLIGHT)
    written = refused = late = 0
    tick_ms: list[float] = []

    async def append(batches: list[tuple[str, list[Event]]]) -> None:
        nonlocal written, refused
        try:
            started = time.perf_counter()
            got = await writer.append_many(batches)
            tick_ms.append((time.perf_counter() - started) * 1000)
            written += sum(1 for i in got.ids if i is not None)
            refused += sum(got.refused)
        finally:
            slots.release()

    emit("STARTED")
    started = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()
    for n in range(ticks):
        delay = started + n * tick - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -tick:
            late += 1
        await slots.acquire()
        batches = []
        for session_id, request_id in groups[n % per_second]:
            seqs[session_id] += 1
            batches.append(
                (session_id, [Event(type="token", request_id=request_id, seq=seqs[session_id], data={"text": "x"})])
            )
        task = asyncio.create_task(append(batches))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    elapsed = time.perf_counter() - started
    for i in range(0, len(sessions), 2000):
        chunk = sessions[i : i + 2000]
        got = await writer.append_many(
            [(s, [Event(type="done", request_id=r, seq=seqs[s] + 1, data={"status": "completed"})]) for s, r in chunk]
        )
        refused += sum(got.refused)
    await redis.aclose()
    tick_ms.sort()
    emit(
        "RESULT",
        {
            "written": written,
            "refused": refused,
            "seconds": round(elapsed, 2),
            "events_per_s": round(written / elapsed),
            "ticks": ticks,
            "late_ticks": late,
            "append_p50_ms": round(tick_ms[len(tick_ms) // 2], 2) if tick_ms else None,
            "append_max_ms": round(tick_ms[-1], 2) if tick_ms else None,
        },
    )


if __name__ == "__main__":
    with open(sys.argv[-1], "rb") as fh:
        config = orjson.loads(fh.read())
    raise_nofile()
    uvloop.run(main(config))
