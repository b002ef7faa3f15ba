"""Redis commands packed by hiredis: the same bytes as redis-py's own packer, the same errors, on real Valkey."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import DataError

from common.platform import tuning

COMMANDS: list[tuple[Any, ...]] = [
    ("GET", "k"),
    ("CONFIG GET", "maxmemory"),  # a two-word name is sent as two arguments
    (b"CLIENT SETNAME", b"relaygate"),
    ("SET", "k", "", "PX", 1500, "NX"),
    ("ZADD", "q", 1733520000.123456, "job", -0.0, "j2", 1e20, "j3", float("inf"), "j4"),
    ("XADD", "s", "MAXLEN", "~", 10_000, "*", "type", "token", "data", '{"text":"héllo ✓"}'),
    ("SET", b"\xff\x00raw", 2**70, "KEEPTTL"),
    ("SET", "view", memoryview(b"a memoryview")),
    ("SET", "big", "x" * 20_000),  # past redis-py's buffer cut-off: it sends chunks, hiredis one buffer
    ("EVALSHA", "a" * 40, 2, "k1", "k2", *[v for i in range(500) for v in (i, "token", f"{i}.5", b"{}")]),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0])[:14])
def test_the_bytes_are_redis_pys(args: tuple[Any, ...]) -> None:
    conn = Connection()
    assert b"".join(tuning._pack_with_hiredis(conn, *args)) == b"".join(tuning._PYTHON_PACK(conn, *args))


@pytest.mark.parametrize("bad", [None, True, {"a": 1}, ["list"]])
def test_what_redis_py_refuses_is_refused_with_its_error(bad: object) -> None:
    with pytest.raises(DataError, match="Invalid input of type"):
        tuning._pack_with_hiredis(Connection(), "SET", "k", bad)


@pytest.fixture
def packed_in_c(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> Redis:
    monkeypatch.setattr(AbstractConnection, "pack_command", AbstractConnection.pack_command)  # restored after
    tuning.pack_commands_in_c()
    assert AbstractConnection.pack_command is tuning._pack_with_hiredis
    return redis


async def test_commands_scripts_and_pipelines_round_trip(packed_in_c: Redis) -> None:
    redis, key = packed_in_c, f"pack:{uuid.uuid4().hex}"
    values = [f"v{i} ✓" for i in range(2_000)] + ["", "x" * 70_000]
    assert await redis.rpush(key, *values) == len(values)
    assert [v.decode() for v in await redis.lrange(key, 0, -1)] == values
    script = redis.register_script("return {#ARGV, ARGV[1], ARGV[#ARGV]}")
    assert await script(keys=[key], args=[*range(1_000), 2.5]) == [1_001, b"0", b"2.5"]
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(f"{key}:n", 41).incr(f"{key}:n").config_get("maxmemory").delete(key, f"{key}:n")
        assert (await pipe.execute())[:2] == [True, 42]
