"""StreamWriter.append_many: many streams and cancel flags in one call; a retry writes nothing twice."""

from __future__ import annotations

import asyncio
import uuid

from common.platform.keys import bucket
from common.streams.protocol import Event, connect
from common.streams.writer import StreamWriter
from tests.conftest import Infra
from tests.support.cluster import EmbeddedValkeyCluster


async def test_append_many_writes_every_stream_reads_flags_and_dedupes_retries(infra: Infra) -> None:
    redis = connect(infra.redis_url, cluster=False, max_connections=4)
    writer = StreamWriter(redis, buckets=256, maxlen=1000, ttl_seconds=60)
    try:
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        events = [Event(type="token", request_id="r1", seq=n, data={"text": f"t{n}"}) for n in (1, 2)]
        other = [Event(type="token", request_id="r2", seq=1, data={"text": "x"})]
        flag = f"test:flag:{uuid.uuid4()}"
        await redis.set(flag, "stop")
        got = await writer.append_many([(a, events), (b, other)], [(a, flag), (b, flag + ":none")])
        assert all(got.ids) and got.values == [b"stop", None] and got.refused == [False, False]
        assert await redis.xlen(writer.key(a)) == 2 and await redis.xlen(writer.key(b)) == 1
        # A retry of a call whose reply was lost: nothing already written is written again.
        more = [*events, Event(type="token", request_id="r1", seq=3, data={"text": "t3"})]
        await writer.append_many([(a, more)], dedupe=True)
        entries = await redis.xrange(writer.key(a))
        assert [e[1][b"seq"] for e in entries] == [b"1", b"2", b"3"]
        await writer.append_many([(a, events)])
        assert await redis.xlen(writer.key(a)) == 5
    finally:
        await redis.aclose()


async def test_a_burst_over_many_buckets_waits_for_the_cluster_connections(
    valkey_cluster: EmbeddedValkeyCluster,
) -> None:
    """One append_many call is one script call per bucket, all at once: with two connections per node,
    the burst must wait for them, not fail with MaxConnectionsError (as redis-py's cluster client does)."""
    redis = connect(valkey_cluster.url, cluster=True, max_connections=2)
    writer = StreamWriter(redis, buckets=256, maxlen=1000, ttl_seconds=60)
    try:
        sessions = [str(uuid.uuid4()) for _ in range(200)]
        assert len({bucket(s, 256) for s in sessions}) > 50
        got = await writer.append_many(
            [(s, [Event(type="token", request_id=f"r-{s}", seq=1, data={})]) for s in sessions]
        )
        assert all(got.ids) and not any(got.refused)
        pipes = []
        for s in sessions[:40]:
            pipe = redis.pipeline(transaction=False)
            pipe.xlen(writer.key(s))
            pipes.append(pipe.execute())
        assert [r[0] for r in await asyncio.gather(*pipes)] == [1] * 40
    finally:
        await redis.aclose()
