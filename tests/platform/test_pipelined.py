"""Concurrent Redis commands of one client go as one pipeline, on real Valkey; each caller gets its own reply."""

from __future__ import annotations

import asyncio
import socket
import uuid

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from common.platform.batching import pipelined


async def test_concurrent_commands_share_pipelines_and_get_their_own_parsed_replies(redis: Redis) -> None:
    tag = uuid.uuid4().hex
    send = pipelined(redis)
    claims = await asyncio.gather(*(send.command("SET", f"{tag}:{i % 4}", str(i), "EX", 60, "NX") for i in range(20)))
    # The client's reply parsing applies (SET NX: True or None), and one caller wins each key.
    assert sorted(map(bool, claims)) == [False] * 16 + [True] * 4
    await redis.xadd(f"{tag}:s", {"f": "v"})
    entries = await asyncio.gather(*(send.command("XRANGE", f"{tag}:s", "-", "+", "COUNT", 5) for _ in range(5)))
    assert all(e == entries[0] and e[0][1] == {b"f": b"v"} for e in entries)
    assert send.batcher.batches >= 2


async def test_an_error_reaches_only_the_command_that_caused_it(redis: Redis) -> None:
    tag = uuid.uuid4().hex
    await redis.set(f"{tag}:string", "x")
    send = pipelined(redis)
    outcomes = await asyncio.gather(
        *(send.command("XRANGE", f"{tag}:string" if i == 3 else f"{tag}:none", "-", "+") for i in range(8)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[3], ResponseError) and "WRONGTYPE" in str(outcomes[3])
    assert [o for i, o in enumerate(outcomes) if i != 3] == [[]] * 7


async def test_scripts_the_server_lost_are_loaded_and_run_once(redis: Redis) -> None:
    tag = uuid.uuid4().hex
    script = redis.register_script("return redis.call('INCR', KEYS[1])")
    await script(keys=[f"{tag}:warm"])
    await redis.script_flush()  # as after a restart: the server no longer has the script
    send = pipelined(redis)
    counts = await asyncio.gather(*(send.script(script, [f"{tag}:n"], []) for _ in range(10)))
    assert sorted(counts) == list(range(1, 11))
    assert int(await redis.get(f"{tag}:n")) == 10


async def test_a_connection_failure_reaches_every_caller() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    try:
        send = pipelined(down)
        outcomes = await asyncio.gather(*(send.command("GET", "k") for _ in range(6)), return_exceptions=True)
        assert all(isinstance(o, RedisConnectionError) for o in outcomes), outcomes
    finally:
        await down.aclose()
