"""The stream writer: every append to a session (or run) stream, as one atomic script call.

Its Lua scripts are the `.lua` files beside this module, loaded once at import.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from redis.asyncio import RedisCluster

from common.platform import lua
from common.platform.batching import pipelined
from common.platform.keys import (
    NOTICE_WINDOW_MS,
    bucket,
    bucket_tag,
    fence_key,
    intake_key,
    notify_key,
    run_stream_key,
    stream_key,
)
from common.streams.protocol import (
    Event,
    StreamsRedis,
    _text,
    intake_member,
)

_APPEND = lua.load(__file__, "append.lua", WINDOW_MS=NOTICE_WINDOW_MS)
_APPEND_MANY = lua.load(__file__, "append_many.lua", WINDOW_MS=NOTICE_WINDOW_MS)


@dataclass(frozen=True)
class Appended:
    """What one `append_many` call did, in input order: the last entry id written per batch (None when
    nothing was), the value per read key, and whether each batch was refused by its request's fence."""

    ids: list[str | None]
    values: list[bytes | None]
    refused: list[bool]


class StreamWriter:
    """Appends events to a session stream; TTL and MAXLEN apply from the first entry."""

    def __init__(self, redis: StreamsRedis, *, buckets: int, maxlen: int, ttl_seconds: int) -> None:
        self.redis = redis
        self.buckets = buckets
        self.maxlen = maxlen
        self.ttl = ttl_seconds
        self._append = redis.register_script(_APPEND)  # type: ignore[misc]  # typed for Redis; RedisCluster has it
        self._append_many = redis.register_script(_APPEND_MANY)  # type: ignore[misc]
        self._cluster = isinstance(redis, RedisCluster)

    def key(self, session_id: str) -> str:
        return stream_key(session_id, self.buckets)

    def notify_key(self, owner: str) -> str:
        """The notice stream of `owner`'s (a session's or run's) stream: its bucket's on a cluster."""
        return notify_key(bucket_tag(owner, self.buckets) if self._cluster else None)

    async def append(self, session_id: str, events: Iterable[Event]) -> list[str]:
        """Append to a session's stream, unfenced (a request's own events go through `append_many`)."""
        return await self._call_append([self.key(session_id), self.notify_key(session_id)], "", events)

    async def _call_append(self, keys: list[str], member: str, events: Iterable[Event]) -> list[str]:
        args: list[str | int] = [self.maxlen, self.ttl, member]
        for event in events:
            f = event.fields()
            args.extend((f["type"], f["request_id"], f["attempt"], f["seq"], f["ts"], f["data"]))
        ids = await pipelined(self.redis).script(self._append, keys, args)
        return [_text(i) for i in ids]

    async def append_many(
        self,
        batches: list[tuple[str, list[Event]]],
        reads: list[tuple[str, str]] | None = None,
        *,
        dedupe: bool = False,
        fenced: bool = True,
    ) -> Appended:
        """Append the events of many sessions and GET keys of those sessions in one round trip.

        `batches` are (session id, events of one attempt); `reads` are (session id, key) so that on a
        Redis Cluster each key goes with its session's slot. On a cluster there is one call per bucket,
        all at once. `dedupe` makes a retry after a lost reply safe: what the first try wrote is not
        written again. `fenced` batches are refused once a newer attempt of their request wrote, or its
        `done` was written (common.platform.keys.fence_key).
        """
        reads = reads or []
        if not self._cluster:
            return await self._call_many(batches, [key for _, key in reads], dedupe, fenced, notify_key(None))
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for n, (session_id, _) in enumerate(batches):
            groups.setdefault(bucket(session_id, self.buckets), ([], []))[0].append(n)
        for n, (session_id, _) in enumerate(reads):
            groups.setdefault(bucket(session_id, self.buckets), ([], []))[1].append(n)
        results = await asyncio.gather(
            *(
                self._call_many(
                    [batches[i] for i in b],
                    [reads[i][1] for i in r],
                    dedupe,
                    fenced,
                    self.notify_key(batches[b[0]][0] if b else reads[r[0]][0]),
                )
                for b, r in groups.values()
            )
        )
        merged = Appended([None] * len(batches), [None] * len(reads), [False] * len(batches))
        for (b, r), got in zip(groups.values(), results, strict=True):
            for i, entry_id, refused in zip(b, got.ids, got.refused, strict=True):
                merged.ids[i], merged.refused[i] = entry_id, refused
            for i, read in zip(r, got.values, strict=True):
                merged.values[i] = read
        return merged

    async def append_run(self, run_id: str, events: list[Event], *, dedupe: bool = False) -> bool:
        """Append one attempt's events to a flow run's stream, fenced and deduplicated as `append_many`
        does a request's (the run's fence is its own); False when refused."""
        got = await self._call_many(
            [(run_id, events)], [], dedupe, True, self.notify_key(run_id), lambda r: run_stream_key(r, self.buckets)
        )
        return not got.refused[0]

    async def end(self, session_id: str, events: list[Event]) -> bool:
        """Write a request's closing events (ending with `done`) unless it already ended or a newer
        attempt took it over; False when refused. Safe to repeat: only the first ending is written."""
        return not (await self.append_many([(session_id, events)])).refused[0]

    async def _call_many(
        self,
        batches: list[tuple[str, list[Event]]],
        reads: list[str],
        dedupe: bool,
        fenced: bool,
        notify: str,
        stream_of: Callable[[str], str] | None = None,
    ) -> Appended:
        """`batches` are (owner, events): a session's, or with `stream_of` (owner -> stream key) a run's."""
        stream_of = stream_of or self.key
        args: list[str | int] = [self.maxlen, self.ttl, len(batches), int(dedupe)]
        fences = []
        for owner, events in batches:
            args.extend((len(events), int(fenced)))
            for event in events:
                f = event.fields()
                args.extend((f["type"], f["request_id"], f["attempt"], f["seq"], f["ts"], f["data"]))
            request_id = events[0].request_id if events else ""
            fences.append(fence_key(owner, request_id, self.buckets) if fenced and events else stream_of(owner))
        keys = [stream_of(owner) for owner, _ in batches] + fences + [notify] + reads
        last, values, refused = await pipelined(self.redis).script(self._append_many, keys, args)
        ids = [_text(i) if i else None for i in last] + [None] * (len(batches) - len(last))
        got = [v or None for v in values] + [None] * (len(reads) - len(values))
        return Appended(ids, got, [bool(r) for r in refused] + [False] * (len(batches) - len(refused)))

    async def announce(self, session_id: str, request_id: str, events: Iterable[Event]) -> list[str]:
        """Append a new request's first events and record it in the bucket's intake set, atomically."""
        return await self._call_append(
            [self.key(session_id), self.notify_key(session_id), intake_key(session_id, self.buckets)],
            intake_member(session_id, request_id),
            events,
        )
