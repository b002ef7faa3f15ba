"""Load generator for bench/run.py (not meant to be run by hand).

`python bench/load.py MODE CONFIG.json` runs one side of one scenario in its own process
and reports to bench/run.py on stdout, one line per message: `KIND {json}`.

Client modes (HTTP/1.1 over raw asyncio sockets, responses parsed by httptools, one
uvloop event loop per process):
  idle         open idle SSE streams, report `HELD`, hold them, report how many survived
  relay        open SSE streams, report `READY`, count `token` events until every stream saw `done`
  latency      like relay, but compute receipt - t for each token (t is the XADD wall time in data)
  first-token  sequential POST /api/v1/requests/web with Accept: text/event-stream
  accept       concurrent keep-alive POST /api/v1/requests/web (202 expected)
Writer modes (raw RESP over one socket, replies parsed by hiredis):
  write-burst  XADD `tokens` token events per stream as fast as possible, then `done`
  write-paced  XADD `rate` token events per second per stream for `seconds`, then `done`

Clients that run until told otherwise also stop when bench/run.py writes a line to stdin.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis
import httptools
import orjson
import uvloop

from common.platform.keys import NOTICE_WINDOW_MS, notify_key

TOKEN_MARK = b"\nevent: token\n"
DONE_MARK = b"\nevent: done\n"


def emit(kind: str, payload: dict[str, Any] | None = None) -> None:
    """One message to bench/run.py; every message carries this process's CPU seconds so far."""
    payload = {**(payload or {}), "cpu_s": round(time.process_time(), 3)}
    sys.stdout.write(f"{kind} {json.dumps(payload)}\n")
    sys.stdout.flush()


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stop_event() -> asyncio.Event:
    """Set when bench/run.py writes a line (or closes) our stdin."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def watch() -> None:
        sys.stdin.readline()
        loop.call_soon_threadsafe(event.set)

    threading.Thread(target=watch, daemon=True).start()
    return event


# --------------------------------------------------------------------------- HTTP client


class Http(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; `sink` gets the (de-chunked) body as it arrives."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sink: Callable[[bytes], None] | None = None
        self.status = 0
        self.headers_at = 0.0
        self.headers: asyncio.Future[int] = self.loop.create_future()
        self.done: asyncio.Future[bool] = self.loop.create_future()
        self.open = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.headers.done():
            self.headers.set_result(0)
        if not self.done.done():
            self.done.set_result(False)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_at = time.perf_counter()
        if not self.headers.done():
            self.headers.set_result(self.status)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink(body)

    def on_message_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(True)

    # API
    def send(self, request: bytes, sink: Callable[[bytes], None] | None = None) -> None:
        self.sink = sink
        self.status = 0
        self.headers = self.loop.create_future()
        self.done = self.loop.create_future()
        assert self.transport is not None
        self.transport.write(request)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(port: int) -> Http:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Http, "127.0.0.1", port)
    return proto


def get_request(path: str, token: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()


def post_request(path: str, token: str, body: bytes, accept: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nAccept: {accept}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def stream_path(session_id: str) -> str:
    return f"/api/v1/sessions/{session_id}/stream?from=%24"


class Frames:
    """Splits an SSE body into complete frames (text up to a blank line), keeping the tail."""

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail = b""

    def complete(self, body: bytes) -> bytes:
        buf = self.tail + body if self.tail else body
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.tail = buf
            return b""
        self.tail = buf[end + 2 :]
        return buf[: end + 1]


async def open_streams(
    cfg: dict[str, Any], make_sink: Callable[[int], Callable[[bytes], None] | None]
) -> tuple[list[Http], dict[str, Any]]:
    """Open one SSE stream per session, at most `open_concurrency` handshakes in flight."""
    port, token = cfg["port"], cfg["token"]
    sem = asyncio.Semaphore(cfg.get("open_concurrency", 200))
    failures: dict[str, int] = {}
    started = time.perf_counter()

    async def one(i: int, session_id: str) -> Http | None:
        async with sem:
            reason = "?"
            for attempt in range(5):
                try:
                    conn = await connect(port)
                except OSError as exc:
                    reason = type(exc).__name__
                    await asyncio.sleep(0.1 * (attempt + 1))
                    continue
                conn.send(get_request(stream_path(session_id), token), make_sink(i))
                try:
                    status = await asyncio.wait_for(asyncio.shield(conn.headers), 60)
                except TimeoutError:
                    status = -1
                if status == 200:
                    return conn
                conn.close()
                reason = f"http {status}" if status > 0 else ("timeout" if status < 0 else "closed")
                if status >= 400:
                    break
                await asyncio.sleep(0.1 * (attempt + 1))
            failures[reason] = failures.get(reason, 0) + 1
            return None

    results = await asyncio.gather(*(one(i, s) for i, s in enumerate(cfg["sessions"])))
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.5)  # a stream the gateway cut right after its headers is not "open"
    conns = [c for c in results if c is not None and c.open]
    dropped = sum(1 for c in results if c is not None and not c.open)
    if dropped:
        failures["closed after 200"] = dropped
    return conns, {"opened": len(conns), "failed": failures, "open_seconds": round(elapsed, 3)}


# --------------------------------------------------------------------------- client modes


async def mode_idle(cfg: dict[str, Any]) -> None:
    conns, info = await open_streams(cfg, lambda i: None)
    emit("HELD", info)
    await asyncio.sleep(cfg["hold"])
    held = sum(1 for c in conns if c.open and not c.done.done())
    for c in conns:
        c.close()
    await asyncio.sleep(0.2)
    emit("RESULT", {**info, "held": held})


class RelayStats:
    def __init__(self, expected: int) -> None:
        self.tokens = 0
        self.first = 0.0
        self.last = 0.0
        self.done = 0
        self.expected = expected
        self.all_done = asyncio.Event()


class RelaySink:
    __slots__ = ("finished", "frames", "stats")

    def __init__(self, stats: RelayStats) -> None:
        self.frames = Frames()
        self.stats = stats
        self.finished = False

    def __call__(self, body: bytes) -> None:
        chunk = self.frames.complete(body)
        if not chunk:
            return
        n = chunk.count(TOKEN_MARK)
        st = self.stats
        if n:
            now = time.monotonic()  # CLOCK_MONOTONIC: comparable across the load processes
            st.tokens += n
            if not st.first:
                st.first = now
            st.last = now
        if not self.finished and DONE_MARK in chunk:
            self.finished = True
            st.done += 1
            if st.done >= st.expected:
                st.all_done.set()


async def wait_done(all_done: asyncio.Event, stop: asyncio.Event, timeout: float) -> bool:
    waiters = [asyncio.ensure_future(all_done.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    return all_done.is_set()


async def mode_relay(cfg: dict[str, Any]) -> None:
    stop = stop_event()
    stats = RelayStats(len(cfg["sessions"]))
    conns, info = await open_streams(cfg, lambda i: RelaySink(stats))
    stats.expected = len(conns)
    emit("READY", info)
    finished = await wait_done(stats.all_done, stop, cfg["timeout"])
    closed_early = sum(1 for c in conns if not c.open and not c.sink.finished)  # type: ignore[union-attr,misc]
    for c in conns:
        c.close()
    emit(
        "RESULT",
        {
            **info,
            "tokens": stats.tokens,
            "first": stats.first,
            "last": stats.last,
            "done": stats.done,
            "all_done": finished,
            "closed_early": closed_early,
        },
    )


class LatencySink:
    __slots__ = ("finished", "frames", "samples", "stats", "warmup_seq")

    def __init__(self, stats: RelayStats, samples: list[float], warmup_seq: int) -> None:
        self.frames = Frames()
        self.stats = stats
        self.samples = samples
        self.warmup_seq = warmup_seq
        self.finished = False

    def __call__(self, body: bytes) -> None:
        chunk = self.frames.complete(body)
        if not chunk:
            return
        now = time.time()
        st = self.stats
        for frame in chunk.split(b"\n\n"):
            if TOKEN_MARK in frame:
                event = orjson.loads(frame[frame.index(b"\ndata: ") + 7 :])
                st.tokens += 1
                if event["seq"] > self.warmup_seq:
                    self.samples.append(now - event["data"]["t"])
            elif not self.finished and DONE_MARK in frame:
                self.finished = True
                st.done += 1
                if st.done >= st.expected:
                    st.all_done.set()


async def mode_latency(cfg: dict[str, Any]) -> None:
    stop = stop_event()
    stats = RelayStats(len(cfg["sessions"]))
    samples: list[float] = []
    conns, info = await open_streams(cfg, lambda i: LatencySink(stats, samples, cfg["warmup_seq"]))
    stats.expected = len(conns)
    emit("READY", info)
    finished = await wait_done(stats.all_done, stop, cfg["timeout"])
    for c in conns:
        c.close()
    emit(
        "RESULT",
        {
            **info,
            "tokens": stats.tokens,
            "done": stats.done,
            "all_done": finished,
            "samples_ms": [round(s * 1000, 3) for s in samples],
        },
    )


class FirstTokenSink:
    """Notes when the first token arrives, and the `ts` of the events before it (for a breakdown)."""

    __slots__ = ("first", "first_wall", "frames", "ts")

    def __init__(self) -> None:
        self.frames = Frames()
        self.first = 0.0
        self.first_wall = 0.0
        self.ts: dict[str, float] = {}

    def __call__(self, body: bytes) -> None:
        if self.first:
            return
        chunk = self.frames.complete(body)
        if not chunk:
            return
        now, wall = time.perf_counter(), time.time()
        for frame in chunk.split(b"\n\n"):
            start = frame.find(b"\ndata: ")
            if start < 0:
                continue
            event = orjson.loads(frame[start + 7 :])
            self.ts.setdefault(event["type"], event["ts"])
            if event["type"] == "token":
                self.first, self.first_wall = now, wall
                return


SEGMENTS = {  # name: (from, to) over the wall clock: "sent"/"received" are the client's, the rest event `ts`
    "accept": ("sent", "request.accepted"),
    "queue_to_start": ("request.accepted", "run.started"),
    "start_to_token": ("run.started", "token"),
    "token_relay": ("token", "received"),
}


async def mode_first_token(cfg: dict[str, Any]) -> None:
    port, token = cfg["port"], cfg["token"]
    first_ms: list[float] = []
    headers_ms: list[float] = []
    total_ms: list[float] = []
    segments: dict[str, list[float]] = {name: [] for name in SEGMENTS}
    failures: dict[str, int] = {}
    conn: Http | None = None
    for session_id in cfg["sessions"]:
        body = orjson.dumps(
            {
                "content": "hi",
                "session_id": session_id,
                "metadata": {"offline": {"tokens": cfg["tokens"], "tokens_per_second": 0}},
            }
        )
        if conn is None or not conn.open:
            conn = await connect(port)
        sink = FirstTokenSink()
        sent_wall = time.time()
        started = time.perf_counter()
        conn.send(post_request("/api/v1/requests/web", token, body, accept="text/event-stream"), sink)
        try:
            complete = await asyncio.wait_for(asyncio.shield(conn.done), cfg.get("request_timeout", 30))
        except TimeoutError:
            complete = False
        if not complete or conn.status != 200 or not sink.first:
            reason = f"http {conn.status}" if conn.status not in (0, 200) else ("no token" if complete else "timeout")
            failures[reason] = failures.get(reason, 0) + 1
            conn.close()
            conn = None
            continue
        first_ms.append((sink.first - started) * 1000)
        headers_ms.append((conn.headers_at - started) * 1000)
        total_ms.append((time.perf_counter() - started) * 1000)
        marks = {**sink.ts, "sent": sent_wall, "received": sink.first_wall}
        for name, (a, b) in SEGMENTS.items():
            if a in marks and b in marks:
                segments[name].append((marks[b] - marks[a]) * 1000)
    if conn is not None:
        conn.close()
    emit(
        "RESULT",
        {
            "first_ms": first_ms,
            "headers_ms": headers_ms,
            "total_ms": total_ms,
            "failed": failures,
            "segments_ms": segments,
        },
    )


async def mode_accept(cfg: dict[str, Any]) -> None:
    port, token = cfg["port"], cfg["token"]
    body = orjson.dumps(
        {"content": "hi", "new_session": True, "metadata": {"offline": {"tokens": 1, "tokens_per_second": 0}}}
    )
    request = post_request("/api/v1/requests/web", token, body)
    start = time.perf_counter()
    measure_from = start + cfg["warmup"]
    measure_to = measure_from + cfg["seconds"]
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    accepted = responses = 0

    async def client() -> None:
        nonlocal accepted, responses
        conn: Http | None = None
        while time.perf_counter() < measure_to:
            if conn is None or not conn.open:
                conn = await connect(port)
            sent = time.perf_counter()
            conn.send(request)
            try:
                complete = await asyncio.wait_for(asyncio.shield(conn.done), 30)
            except TimeoutError:
                complete = False
            now = time.perf_counter()
            status = conn.status if complete else 0
            responses += 1
            if not complete:
                conn.close()
                conn = None
            if measure_from <= now <= measure_to:
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status == 202:
                    accepted += 1
                    latencies.append((now - sent) * 1000)
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client() for _ in range(cfg["connections"])))
    emit(
        "RESULT",
        {
            "accepted": accepted,
            "seconds": cfg["seconds"],
            "statuses": statuses,
            "responses": responses,
            "latency_ms": latencies,
        },
    )


# --------------------------------------------------------------------------- writer modes


def resp(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class RespConn:
    """A bare pipelining Redis connection: send a batch of commands, read exactly that many replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader()

    @classmethod
    async def open(cls, url: str) -> RespConn:
        u = urlparse(url)
        reader, writer = await asyncio.open_connection(u.hostname or "127.0.0.1", u.port or 6379)
        conn = cls(reader, writer)
        if u.password:
            args = [unquote(u.username).encode()] if u.username else []
            await conn.batch([resp(b"AUTH", *args, unquote(u.password).encode())])
        db = (u.path or "/0").strip("/") or "0"
        if db != "0":
            await conn.batch([resp(b"SELECT", db.encode())])
        return conn

    async def batch(self, commands: list[bytes]) -> list[Any]:
        self.writer.write(b"".join(commands))
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = self.parser.gets()
            if reply is False:
                data = await self.reader.read(1 << 20)
                if not data:
                    raise ConnectionError("redis closed the connection")
                self.parser.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"redis error: {reply}")
            replies.append(reply)
        return replies

    def close(self) -> None:
        self.writer.close()


def xadd(key: bytes, type_: bytes, request_id: bytes, seq: int, ts: float, data: bytes, maxlen: bytes) -> bytes:
    return resp(
        b"XADD",
        key,
        b"MAXLEN",
        b"~",
        maxlen,
        b"*",
        b"type",
        type_,
        b"request_id",
        request_id,
        b"attempt",
        b"1",
        b"seq",
        str(seq).encode(),
        b"ts",
        f"{ts:.6f}".encode(),
        b"data",
        data,
    )


NOTIFY_KEY = notify_key(None).encode()  # the bench's gateway runs on a single server


def notice(keys: list[bytes]) -> bytes:
    """The notice relaygate's append scripts write beside their XADDs: without it a hub finds the
    entries only at its next sweep."""
    minid = b"%d" % (time.time() * 1000 - NOTICE_WINDOW_MS)
    return resp(b"XADD", NOTIFY_KEY, b"MINID", b"~", minid, b"*", *(part for k in keys for part in (b"k", k)))


async def finish_streams(conn: RespConn, keys: list[bytes], request_ids: list[bytes], seq: int, maxlen: bytes) -> None:
    now = time.time()
    await conn.batch(
        [
            *(
                xadd(k, b"done", r, seq, now, b'{"status":"completed"}', maxlen)
                for k, r in zip(keys, request_ids, strict=True)
            ),
            notice(keys),
        ]
    )
    await conn.batch([resp(b"EXPIRE", k, b"3600") for k in keys])


async def mode_write_burst(cfg: dict[str, Any]) -> None:
    conn = await RespConn.open(cfg["redis_url"])
    keys = [k.encode() for k in cfg["keys"]]
    request_ids = [str(uuid.uuid4()).encode() for _ in keys]
    maxlen = str(cfg["maxlen"]).encode()
    per_batch = max(1, cfg.get("batch", 1000))
    started = time.perf_counter()
    pending: list[bytes] = []
    pending_keys: list[bytes] = []
    for seq in range(1, cfg["tokens"] + 1):
        data = b'{"text":"tok%d "}' % seq
        now = time.time()
        for key, rid in zip(keys, request_ids, strict=True):
            pending.append(xadd(key, b"token", rid, seq, now, data, maxlen))
            pending_keys.append(key)
            if len(pending) >= per_batch:
                await conn.batch([*pending, notice(pending_keys)])
                pending, pending_keys = [], []
    if pending:
        await conn.batch([*pending, notice(pending_keys)])
    elapsed = time.perf_counter() - started
    await finish_streams(conn, keys, request_ids, cfg["tokens"] + 1, maxlen)
    conn.close()
    written = cfg["tokens"] * len(keys)
    emit("RESULT", {"written": written, "seconds": round(elapsed, 3), "xadd_per_s": round(written / elapsed)})


async def mode_write_paced(cfg: dict[str, Any]) -> None:
    """Every stream gets `rate` tokens per second; streams are spread over `groups` ticks."""
    conn = await RespConn.open(cfg["redis_url"])
    keys = [k.encode() for k in cfg["keys"]]
    request_ids = [str(uuid.uuid4()).encode() for _ in keys]
    maxlen = str(cfg["maxlen"]).encode()
    rate, seconds, groups = cfg["rate"], cfg["seconds"], cfg.get("groups", 5)
    tick = 1.0 / rate / groups
    members = [list(range(g, len(keys), groups)) for g in range(groups)]
    seqs = [0] * len(keys)
    started = time.perf_counter()
    ticks = int(seconds / tick)
    late = 0
    written = 0
    for n in range(ticks):
        due = started + n * tick
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -tick:
            late += 1
        batch = []
        t = time.time()
        for i in members[n % groups]:
            seqs[i] += 1
            batch.append(xadd(keys[i], b"token", request_ids[i], seqs[i], t, b'{"text":"x","t":%.6f}' % t, maxlen))
        written += len(batch)
        batch.append(notice([keys[i] for i in members[n % groups]]))
        await conn.batch(batch)
    elapsed = time.perf_counter() - started
    await finish_streams(conn, keys, request_ids, max(seqs) + 1, maxlen)
    conn.close()
    emit(
        "RESULT",
        {
            "written": written,
            "seconds": round(elapsed, 3),
            "xadd_per_s": round(written / elapsed),
            "late_ticks": late,
            "ticks": ticks,
        },
    )


MODES = {
    "idle": mode_idle,
    "relay": mode_relay,
    "latency": mode_latency,
    "first-token": mode_first_token,
    "accept": mode_accept,
    "write-burst": mode_write_burst,
    "write-paced": mode_write_paced,
}


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    with open(path, "rb") as fh:
        cfg = orjson.loads(fh.read())
    raise_nofile()
    os.environ.setdefault("PYTHONASYNCIODEBUG", "0")
    uvloop.run(MODES[mode](cfg))


if __name__ == "__main__":
    main()
