"""StreamWriter.append_many: many streams and cancel flags in one call; a retry writes nothing twice."""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.exceptions import ResponseError

from common.platform.batching import pipelined
from common.platform.keys import bucket
from common.streams.protocol import Event, StreamsRedis, connect
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


async def _notices(redis: StreamsRedis, notify: str, after: bytes) -> list[list[bytes]]:
    """The stream keys each notice after `after` names (raw: a notice repeats its field `k`, which
    redis-py's stream replies would fold into one dict entry)."""
    raw = await redis.eval("return redis.call('XRANGE', KEYS[1], ARGV[1], '+')", 1, notify, b"(" + after)  # type: ignore[misc]
    return [flat[1::2] for _, flat in raw]


async def _newest(redis: StreamsRedis, notify: str) -> bytes:
    newest = await redis.xrevrange(notify, count=1)
    return bytes(newest[0][0]) if newest else b"0-0"


async def test_every_append_names_the_streams_it_wrote_in_a_notice(infra: Infra) -> None:
    """The hub learns from the notice stream which streams moved (common.streams.hub)."""
    redis = connect(infra.redis_url, cluster=False, max_connections=4)
    writer = StreamWriter(redis, buckets=256, maxlen=1000, ttl_seconds=60)
    try:
        since = await _newest(redis, "rg:notify")
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        ka, kb = writer.key(a).encode(), writer.key(b).encode()
        await writer.append_many(
            [(a, [Event(type="token", request_id="r1", seq=1)]), (b, [Event(type="token", request_id="r2", seq=1)])]
        )
        assert await writer.end(a, [Event(type="done", request_id="r1", seq=2)])
        # Refused (its request has ended): nothing written, nothing named.
        assert (await writer.append_many([(a, [Event(type="token", request_id="r1", seq=3)])])).refused == [True]
        await writer.append(b, [Event(type="token", request_id="r2", seq=2)])
        ours = [[k for k in keys if k in (ka, kb)] for keys in await _notices(redis, "rg:notify", since)]
        assert [keys for keys in ours if keys] == [[ka, kb], [ka], [kb]]
    finally:
        await redis.aclose()


async def test_on_a_cluster_each_bucket_has_its_notices_and_old_ones_are_trimmed(
    valkey_cluster: EmbeddedValkeyCluster,
) -> None:
    redis = connect(valkey_cluster.url, cluster=True, max_connections=4)
    # Buckets no other test uses, so this test owns their notice streams.
    writer = StreamWriter(redis, buckets=1_000_000, maxlen=1000, ttl_seconds=60)
    try:
        sessions = [str(uuid.uuid4()) for _ in range(3)]
        notifies = [writer.notify_key(s) for s in sessions]
        assert notifies == [f"rg:{{b{bucket(s, 1_000_000)}}}:notify" for s in sessions] and len(set(notifies)) == 3
        old = int(time.time() * 1000) - 60_000
        for n in range(300):  # a minute old: past the window
            await redis.xadd(notifies[0], {"k": "old"}, id=f"{old}-{n}")
        await writer.append_many([(s, [Event(type="token", request_id=s, seq=1)]) for s in sessions])
        for s, notify in zip(sessions, notifies, strict=True):
            assert (await _notices(redis, notify, b"%d-299" % old))[-1] == [writer.key(s).encode()]
        # MINID ~ drops whole nodes of old notices, never the new one.
        assert 1 <= await redis.xlen(notifies[0]) < 301
    finally:
        await redis.aclose()


async def test_concurrent_endings_share_one_pipeline_and_a_bad_stream_fails_alone(infra: Infra) -> None:
    """500 replies ending together are a few round trips, not 500; an error reaches only its caller."""
    redis = connect(infra.redis_url, cluster=False, max_connections=4)
    writer = StreamWriter(redis, buckets=256, maxlen=1000, ttl_seconds=60)
    try:
        sessions = [str(uuid.uuid4()) for _ in range(20)]
        await redis.set(writer.key(sessions[7]), "not a stream")
        before = pipelined(redis).batcher.batches
        results = await asyncio.gather(
            *(writer.end(s, [Event(type="done", request_id=f"r-{s}", seq=1)]) for s in sessions),
            return_exceptions=True,
        )
        assert pipelined(redis).batcher.batches > before
        assert isinstance(results[7], ResponseError)
        assert results[:7] + results[8:] == [True] * 19
    finally:
        await redis.aclose()
