"""Load process for bench/e2e.py: C clients each `POST /stream?feature_id=default&chat_id=<own>`.

`python bench/e2e_load.py e2e CONFIG.json`; reads every reply to `data: [DONE]` and reports one
`RESULT {json}` line (see bench/README.md, "End to end"). Works against relaygate (events with
`type`, `ts`, `data.text`) and the prototype (one message per event, `ts` in its data).

Two clients (`client` in the config): `light`, raw sockets parsed by httptools on uvloop with
orjson; `aiohttp`, an aiohttp session on the default asyncio loop reading the body line by line
and decoding each event with `json.loads`, as a typical Python consumer does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import uvloop
from load import Frames, Http, connect, emit, post_request, raise_nofile


class Samples:
    """Relay latency of every `every`-th token event this process receives, counted across its
    clients, so replies written in fewer events than `every` are sampled too."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.seen = 0
        self.values: list[float] = []

    def event(self, latency_ms: float) -> None:
        self.seen += 1
        if self.seen % self.every == 0:
            self.values.append(latency_ms)


class Client:
    """One reply: tokens counted, event latencies sampled, how it ended."""

    def __init__(self, samples: Samples) -> None:
        self.frames = Frames()
        self.samples = samples
        self.tokens = 0
        self.events = 0
        self.sent = 0.0
        self.accepted = 0.0  # the response's headers (aiohttp client only)
        self.first = 0.0
        self.last = 0.0
        self.last_token = 0.0  # the last token's arrival; `ended` is [DONE]'s
        self.ended = 0.0
        self.done = False
        self.kinds: dict[str, int] = {}

    def __call__(self, body: bytes) -> None:
        chunk = self.frames.complete(body)
        if not chunk:
            return
        now = time.time()
        for frame in chunk.split(b"\n\n"):
            if frame.startswith(b"data: "):
                self.data(frame[6:].strip(), now, orjson.loads)

    def data(self, payload: bytes, now: float, loads: Callable[[bytes], Any]) -> None:
        """One `data:` payload received at `now`."""
        if payload == b"[DONE]":
            self.done = True
            self.ended = now
            self.last = now
            return
        event = loads(payload)
        kind = event.get("type")
        if kind is None:  # the prototype: every message is one token
            count, ts = 1, float(event["ts"])
        elif kind == "token":
            count, ts = len(event["data"]["text"].split()), float(event["ts"])
        else:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            return
        if not self.first:
            self.first = now
        self.tokens += count
        self.events += 1
        self.last = self.last_token = now
        self.samples.event((now - ts) * 1000)


async def one_light(cfg: dict[str, Any], chat: str, samples: Samples) -> Client:
    client = Client(samples)
    try:
        http: Http = await connect(cfg["port"])
    except OSError:
        return client
    client.sent = time.time()
    http.send(post_request(f"/stream?feature_id=default&chat_id={chat}", cfg["token"], b"{}"), client)
    try:
        await asyncio.wait_for(http.done, cfg["timeout"])
    except TimeoutError:
        pass
    http.close()
    return client


async def one_aiohttp(session: aiohttp.ClientSession, cfg: dict[str, Any], chat: str, samples: Samples) -> Client:
    client = Client(samples)
    client.sent = time.time()
    url = f"http://127.0.0.1:{cfg['port']}/stream?feature_id=default&chat_id={chat}"
    try:
        async with (
            asyncio.timeout(cfg["timeout"]),
            session.post(url, json={}, headers={"Authorization": f"Bearer {cfg['token']}"}) as response,
        ):
            client.accepted = time.time()
            async for line in response.content:
                if line.startswith(b"data: "):
                    client.data(line[6:].strip(), time.time(), json.loads)
                    if client.done:
                        break
    except (TimeoutError, aiohttp.ClientError):
        pass
    return client


async def run_clients(cfg: dict[str, Any], samples: Samples) -> list[Client]:
    if cfg.get("client", "light") == "light":
        return await asyncio.gather(*(one_light(cfg, chat, samples) for chat in cfg["chats"]))
    # One connection per client (no pool limit), as C separate users would have.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        return await asyncio.gather(*(one_aiohttp(session, cfg, chat, samples) for chat in cfg["chats"]))


async def main_async(cfg: dict[str, Any]) -> None:
    samples = Samples(cfg.get("sample_every", 5))
    emit("READY")
    start = time.time()
    clients = await run_clients(cfg, samples)
    emit(
        "RESULT",
        {
            "start": start,
            "end": max((c.last for c in clients), default=start),
            "tokens": sum(c.tokens for c in clients),
            "events": sum(c.events for c in clients),
            "complete": sum(1 for c in clients if c.done and c.tokens >= cfg["expect_tokens"]),
            "short": sum(1 for c in clients if c.done and c.tokens < cfg["expect_tokens"]),
            "unfinished": sum(1 for c in clients if not c.done),
            "retrying": sum(c.kinds.get("run.retrying", 0) for c in clients),
            "failed": sum(c.kinds.get("run.failed", 0) for c in clients),
            "first_ms": [round((c.first - c.sent) * 1000, 2) for c in clients if c.first],
            "accept_ms": [round((c.accepted - c.sent) * 1000, 2) for c in clients if c.accepted],
            # each reply's own rate, first token to last: is a stream held at the model's pace?
            "rates": [
                round((c.tokens - 1) / (c.last - c.first), 2) for c in clients if c.tokens > 1 and c.last > c.first
            ],
            # from a reply's last token to its [DONE]: the worker's ending as the client sees it
            "ending_ms": [round((c.ended - c.last_token) * 1000, 2) for c in clients if c.ended and c.last_token],
            "latency_ms": samples.values[:50_000],
        },
    )


def main() -> None:
    raise_nofile()
    cfg = json.loads(open(sys.argv[-1]).read())
    if cfg.get("client", "light") == "light":
        uvloop.run(main_async(cfg))
    else:
        asyncio.run(main_async(cfg))


if __name__ == "__main__":
    main()
