"""SSE clients of bench/streams_100k.py (not meant to be run by hand).

`python bench/streams_100k_load.py clients CONFIG.json` opens one SSE stream per session of its share, each
from the config's own 127.0.0.x source address (its own ephemeral port space) to the session's
gateway, with that session's user's JWT, and follows it until the session's `done`. It reports on
stdout (`KIND {json}` lines): `READY` once every stream it could open is open, then `RESULT`:
streams held to `done`, dropped (closed before `done`), tokens received, and two latency
histograms: relay (receipt wall time minus the entry id's milliseconds, the time Valkey appended
it: written -> received) and end to end (minus the event's `ts`, taken before the writer's append).
It reports early when bench/streams_100k.py writes a line to stdin.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections import Counter
from typing import Any

import orjson
import uvloop
from load import Frames, Http, emit, get_request, raise_nofile, stop_event

# Linux: bind() picks no port; connect() picks one unique per 4-tuple, not per source address.
IP_BIND_ADDRESS_NO_PORT = 24
TOKEN_MARK = b"\nevent: token\n"
DONE_MARK = b"\nevent: done\n"


def latency_bucket(ms: float) -> float:
    """0.1 ms steps below 100 ms, 1 ms steps above: exact enough for p50/p99, small to send."""
    return round(ms, 1) if ms < 100 else float(int(ms))


class Follower:
    """One stream's sink: counts tokens and their latency until `done`."""

    __slots__ = ("conn", "finished", "frames", "run")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.frames = Frames()
        self.finished = False
        self.conn: Http | None = None

    def __call__(self, body: bytes) -> None:
        chunk = self.frames.complete(body)
        if not chunk:
            return
        now = time.time()
        run = self.run
        for frame in chunk.split(b"\n\n"):
            if TOKEN_MARK in frame:
                ts = orjson.loads(frame[frame.index(b"\ndata: ") + 7 :])["ts"]
                written_ms = int(frame[frame.index(b"id: ") + 4 : frame.index(b"-")])
                run.tokens += 1
                run.relay[latency_bucket(now * 1000 - written_ms)] += 1
                run.end_to_end[latency_bucket((now - ts) * 1000)] += 1
            elif DONE_MARK in frame and not self.finished:
                self.finished = True
                run.done += 1
                if run.done >= run.expected:
                    run.all_done.set()


class Run:
    """What this process's streams received."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.tokens = 0
        self.done = 0
        self.relay: Counter[float] = Counter()  # from the entry id: the XADD's time on the Valkey clock
        self.end_to_end: Counter[float] = Counter()  # from the event's `ts`: before the writer's append
        self.all_done = asyncio.Event()


async def connect_from(source: str, port: int) -> Http:
    """A connection to the gateway on `port` from the `source` loopback address."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    _, proto = await loop.create_connection(Http, sock=sock)
    return proto


async def open_all(cfg: dict[str, Any], run: Run) -> tuple[list[Follower], dict[str, Any]]:
    """Open every stream of the share, `open_concurrency` handshakes at a time, retrying transport errors."""
    sem = asyncio.Semaphore(cfg["open_concurrency"])
    failures: Counter[str] = Counter()
    source, tokens = cfg["source"], cfg["tokens"]
    started = time.perf_counter()

    async def one(session_id: str, user: int, port: int) -> Follower | None:
        follower = Follower(run)
        request = get_request(f"/api/v1/sessions/{session_id}/stream?from=%24", tokens[user])
        async with sem:
            reason = "?"
            for attempt in range(5):
                try:
                    conn = await connect_from(source, port)
                except OSError as exc:
                    reason = f"connect: {exc.strerror or type(exc).__name__}"
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                conn.send(request, follower)
                try:
                    status = await asyncio.wait_for(asyncio.shield(conn.headers), cfg["open_timeout"])
                except TimeoutError:
                    status = -1
                if status == 200:
                    follower.conn = conn
                    return follower
                conn.close()
                reason = f"http {status}" if status > 0 else ("timeout" if status < 0 else "closed before headers")
                if status >= 400 and status != 503:
                    break
                await asyncio.sleep(0.2 * (attempt + 1))
            failures[reason] += 1
            return None

    opened = await asyncio.gather(*(one(s, u, p) for s, u, p in cfg["streams"]))
    followers = [f for f in opened if f is not None]
    return followers, {
        "opened": len(followers),
        "open_failed": dict(failures),
        "open_seconds": round(time.perf_counter() - started, 2),
    }


async def main(cfg: dict[str, Any]) -> None:
    stop = stop_event()
    run = Run(len(cfg["streams"]))
    followers, info = await open_all(cfg, run)
    run.expected = len(followers)
    closed_before_ready = sum(1 for f in followers if f.conn is not None and not f.conn.open)
    emit("READY", {**info, "closed_before_ready": closed_before_ready})
    waiters = [asyncio.ensure_future(run.all_done.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    held = sum(1 for f in followers if f.finished)
    dropped = sum(1 for f in followers if not f.finished and f.conn is not None and not f.conn.open)
    for f in followers:
        if f.conn is not None:
            f.conn.close()
    emit(
        "RESULT",
        {
            **info,
            "held": held,
            "dropped": dropped,
            "unfinished": len(followers) - held - dropped,
            "tokens": run.tokens,
            "relay_ms": list(run.relay.items()),
            "end_to_end_ms": list(run.end_to_end.items()),
        },
    )


if __name__ == "__main__":
    with open(sys.argv[-1], "rb") as fh:
        config = orjson.loads(fh.read())
    raise_nofile()
    uvloop.run(main(config))
