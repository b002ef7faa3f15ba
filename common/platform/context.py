"""The wiring the gateway, the workers and the dispatcher share: Postgres, the streams Redis and its
writer, the agents, and the stream hub of the processes that follow streams."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.asyncio import ConnectionPool, RedisCluster

from common.agents.registry import AgentRegistry, load_agents
from common.platform import db
from common.platform.settings import Settings
from common.streams.hub import HUB_READER_NAME, ClusterConnections, Hub, ReaderConnections, ServerConnections
from common.streams.protocol import StreamsRedis
from common.streams.protocol import connect as connect_streams
from common.streams.writer import StreamWriter


@dataclass
class Stores:
    """One process's connections; `close()` releases them."""

    settings: Settings
    db: asyncpg.Pool
    streams: StreamsRedis
    writer: StreamWriter
    agents: AgentRegistry

    async def close(self) -> None:
        await self.streams.aclose()
        await self.db.close()


async def open_stores(
    settings: Settings, *, db_max_size: int, stream_connections: int, pool_name: str, **stream_options: Any
) -> Stores:
    """Connect to Postgres and the streams Redis (one server or a cluster) and load the agents."""
    agents = load_agents(settings.agents_file)
    pool = await db.create_pool(settings.database_url, min_size=2, max_size=db_max_size, name=pool_name)
    streams = connect_streams(
        settings.stream_redis_url,
        cluster=settings.stream_redis_cluster,
        max_connections=stream_connections,
        **stream_options,
    )
    writer = StreamWriter(
        streams, buckets=settings.stream_buckets, maxlen=settings.stream_maxlen, ttl_seconds=settings.stream_ttl_seconds
    )
    return Stores(settings, pool, streams, writer, agents)


def start_hub(settings: Settings, streams: StreamsRedis) -> Hub:
    """A started stream hub: one reader on a single server, one per watched bucket on a cluster."""
    connections: ReaderConnections
    if isinstance(streams, RedisCluster):
        connections = ClusterConnections(streams, client_name=HUB_READER_NAME)
    else:
        connections = ServerConnections(ConnectionPool.from_url(settings.stream_redis_url, client_name=HUB_READER_NAME))
    hub = Hub(
        streams,
        connections,
        block_ms=settings.hub_block_ms,
        queue_size=settings.sse_client_queue,
        heartbeat_seconds=settings.sse_heartbeat_seconds,
        notice_keys=settings.hub_notice_keys,
    )
    hub.start()
    return hub
