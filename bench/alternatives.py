"""Why relaygate does without sse-starlette and fakeredis: the measurements behind the README.

    .venv/bin/uv run --no-project --with-editable . --with sse-starlette==3.4.11 \\
        --with fakeredis[lua]==2.37.1 python bench/alternatives.py

(or `make bench-alternatives`). Neither package is a project dependency; `uv run --with`
installs the pinned versions into a throwaway environment for this script only.

1. SSE: CPU per relayed event and asyncio tasks per open stream, in-process (a fake ASGI
   server, no sockets, so only the response classes differ): relaygate's `sse_response`
   (Starlette's StreamingResponse over frames the hub renders once per entry) against
   sse-starlette's `EventSourceResponse` fed the same entries as `ServerSentEvent`s, and fed
   relaygate's pre-rendered bytes.
2. fakeredis: the Redis behaviours relaygate's tests depend on, each tried on fakeredis's
   in-process server and on a real embedded Valkey, plus start-up time of each. The gateway,
   workers and dispatcher are separate processes in the end-to-end tests, which an
   in-process fake cannot serve.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.streams.relay import sse_frame
from api.streams.sse import sse_response
from common.streams.hub import Entry, to_entry
from common.streams.protocol import Event

EVENTS = 100_000
IDLE_STREAMS = 2_000
SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "method": "GET",
    "path": "/",
    "headers": [],
    "query_string": b"",
}


def _entries(n: int) -> list[Entry]:
    fields = {
        k.encode(): v.encode()
        for k, v in Event(type="token", request_id=str(uuid.uuid4()), seq=1, data={"text": "hello "}).fields().items()
    }
    return [to_entry(f"{1700000000000 + i}-0".encode(), fields) for i in range(n)]


async def _serve(app: Callable[..., Any], until: asyncio.Event | None = None) -> int:
    """Run one ASGI response to its end; returns the body bytes it sent."""
    sent = 0
    disconnected = until or asyncio.Event()

    async def receive() -> dict[str, Any]:
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal sent
        sent += len(message.get("body", b""))

    await app(SCOPE, receive, send)
    return sent


async def _cpu_per_event(make: Callable[[list[Entry]], Any], entries: list[Entry]) -> float:
    gc.collect()
    start = time.process_time()
    await _serve(make(entries))
    return (time.process_time() - start) / len(entries) * 1e6


def _relaygate(batch: int) -> Callable[[list[Entry]], Any]:
    def make(entries: list[Entry]) -> Any:
        async def frames() -> AsyncIterator[bytes]:
            for i in range(0, len(entries), batch):
                yield b"".join(sse_frame(e) for e in entries[i : i + batch])

        return sse_response(frames())

    return make


def _sse_starlette_events() -> Callable[[list[Entry]], Any]:
    from sse_starlette import EventSourceResponse, ServerSentEvent

    def make(entries: list[Entry]) -> Any:
        async def events() -> AsyncIterator[ServerSentEvent]:
            for e in entries:
                yield ServerSentEvent(data=e.json.decode(), id=e.raw_id.decode(), event=e.type.decode())

        return EventSourceResponse(events(), ping=15)

    return make


def _sse_starlette_bytes(batch: int) -> Callable[[list[Entry]], Any]:
    from sse_starlette import EventSourceResponse

    def make(entries: list[Entry]) -> Any:
        async def frames() -> AsyncIterator[bytes]:
            for i in range(0, len(entries), batch):
                yield b"".join(sse_frame(e) for e in entries[i : i + batch])

        return EventSourceResponse(frames(), ping=15)

    return make


async def _idle_cost(make: Callable[[], Any]) -> tuple[float, float]:
    """(asyncio tasks, KiB of Python heap) per open, idle stream."""
    gc.collect()
    base_tasks = len(asyncio.all_tasks())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    stop = asyncio.Event()
    served = [asyncio.create_task(_serve(make(), stop)) for _ in range(IDLE_STREAMS)]
    await asyncio.sleep(0.5)
    tasks = len(asyncio.all_tasks()) - base_tasks
    heap = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    stop.set()
    for task in served:
        task.cancel()
    await asyncio.gather(*served, return_exceptions=True)
    return tasks / IDLE_STREAMS, heap / IDLE_STREAMS / 1024


def _idle_relaygate() -> Any:
    async def frames() -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""

    return sse_response(frames())


def _idle_sse_starlette() -> Any:
    from sse_starlette import EventSourceResponse

    async def frames() -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""

    return EventSourceResponse(frames(), ping=15)


async def sse() -> None:
    entries = _entries(EVENTS)
    rows = [
        ("relaygate sse_response, one event per write", _relaygate(1)),
        ("sse-starlette, one ServerSentEvent per event", _sse_starlette_events()),
        ("sse-starlette, relaygate's frames, one per write", _sse_starlette_bytes(1)),
        ("relaygate sse_response, 50 events per write", _relaygate(50)),
        ("sse-starlette, relaygate's frames, 50 per write", _sse_starlette_bytes(50)),
    ]
    print(f"SSE, CPU µs per event over {EVENTS:,} token events (median of 3):")
    for name, make in rows:
        runs = sorted([await _cpu_per_event(make, entries) for _ in range(3)])
        print(f"  {name:<56} {runs[1]:6.2f}")
    print(f"SSE, per open idle stream ({IDLE_STREAMS:,} streams):")
    for name, idle in (("relaygate sse_response", _idle_relaygate), ("sse-starlette", _idle_sse_starlette)):
        tasks, kib = await _idle_cost(idle)
        print(f"  {name:<56} {tasks:4.1f} tasks, {kib:5.1f} KiB")


async def _fake_checks(redis: Any, other: Any) -> dict[str, str]:
    """The behaviours relaygate relies on, on one server reached by two clients."""
    from common.platform.keys import stream_key
    from common.streams.writer import StreamWriter

    results: dict[str, str] = {}
    key = f"rg:{{b1}}:{uuid.uuid4()}"

    async def check(name: str, probe: Callable[[], Any]) -> None:
        try:
            results[name] = "ok" if await probe() else "wrong result"
        except Exception as exc:
            results[name] = f"fails: {type(exc).__name__}: {str(exc)[:70]}"

    async def lua_append() -> bool:
        writer = StreamWriter(redis, buckets=256, maxlen=100, ttl_seconds=60)
        return len(await writer.append(key.rsplit(":", 1)[1], [Event(type="token", request_id="r")])) == 1

    async def blocking_wake() -> bool:
        waiting = asyncio.create_task(other.xread({key + "w": "$"}, block=2000))
        await asyncio.sleep(0.1)
        await redis.xadd(key + "w", {"a": "1"})
        return bool(await asyncio.wait_for(waiting, 3))

    async def xinfo_counters() -> bool:
        await redis.xadd(key + "i", {"a": "1"})
        info = await redis.xinfo_stream(key + "i")
        return "entries-added" in info and "max-deleted-entry-id" in info

    async def client_kill() -> bool:
        await other.client_setname("victim")
        return bool(await redis.client_kill_filter(_type="normal", skipme=True))

    async def hub_relay() -> bool:
        from common.streams.hub import Hub, ServerConnections

        hub = Hub(redis, ServerConnections(redis.connection_pool), block_ms=1000, queue_size=10, heartbeat_seconds=60)
        hub.start()
        try:
            session = str(uuid.uuid4())
            sub = await hub.subscribe(stream_key(session, 256))
            await StreamWriter(other, buckets=256, maxlen=100, ttl_seconds=60).append(
                session, [Event(type="token", request_id="r")]
            )
            return bool(await asyncio.wait_for(sub.take(), 3))
        finally:
            await hub.stop()

    await check("Lua script (XADD MAXLEN ~ + EXPIRE in one step)", lua_append)
    await check("the gateway hub's notices and raw-RESP XREADs on its own connection", hub_relay)
    await check("XREAD BLOCK woken by another client's XADD", blocking_wake)
    await check("XINFO STREAM entries-added / max-deleted-entry-id", xinfo_counters)
    await check("CLIENT KILL (outage tests cut connections)", client_kill)
    return results


async def fakeredis_vs_valkey() -> None:
    import tempfile

    import fakeredis
    from redis.asyncio import Redis

    from cli.dev.embedded import EmbeddedValkey

    start = time.perf_counter()
    server = fakeredis.FakeServer()
    fake, fake2 = (fakeredis.FakeAsyncRedis(server=server) for _ in range(2))
    await fake.ping()
    fake_start = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        valkey = EmbeddedValkey(Path(folder), persistent=False)
        real, real2 = Redis.from_url(valkey.url), Redis.from_url(valkey.url)
        await real.ping()
        real_start = time.perf_counter() - start
        try:
            fake_results = await _fake_checks(fake, fake2)
            real_results = await _fake_checks(real, real2)
        finally:
            await real.aclose()
            await real2.aclose()
            valkey.stop()
    print(f"fakeredis {fakeredis.__version__ if hasattr(fakeredis, '__version__') else ''} against embedded Valkey:")
    print(f"  {'start-up':<52} fakeredis {fake_start * 1000:6.1f} ms | Valkey {real_start * 1000:6.1f} ms")
    for name in fake_results:
        print(f"  {name:<56} fakeredis {fake_results[name]} | Valkey {real_results[name]}")


async def main() -> None:
    await sse()
    await fakeredis_vs_valkey()


if __name__ == "__main__":
    asyncio.run(main())
