"""The prototype's FastAPI service: `POST /stream` enqueues (once per chat) and relays with a blocking XREAD.

Rebuilt from the reference document for bench/e2e.py; not part of relaygate.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from redis.asyncio import Redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
app = FastAPI()
state: dict[str, object] = {}


@app.on_event("startup")
async def startup() -> None:
    state["arq"] = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    state["redis"] = Redis.from_url(REDIS_URL)


@app.post("/stream")
async def stream(feature_id: str, chat_id: str) -> StreamingResponse:
    redis: Redis = state["redis"]  # type: ignore[assignment]
    key = f"stream:{feature_id}:{chat_id}"
    if not await redis.exists(key):
        pool: ArqRedis = state["arq"]  # type: ignore[assignment]
        await pool.enqueue_job("generate_messages", feature_id, chat_id)

    async def events() -> AsyncIterator[bytes]:
        last = "0"
        while True:
            got = await redis.xread({key: last}, block=5000, count=100)
            for _, entries in got or []:
                for entry_id, fields in entries:
                    last = entry_id
                    data = fields[b"data"]
                    if data == b"[DONE]":
                        yield b"data: [DONE]\n\n"
                        return
                    yield b"data: " + data + b"\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
