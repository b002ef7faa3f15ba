"""What every job of one dispatcher process shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from arq.connections import ArqRedis

from common.platform.settings import Settings
from common.streams.hub import Hub
from common.streams.protocol import StreamsRedis
from common.streams.writer import StreamWriter


@dataclass
class DispatcherRuntime:
    settings: Settings
    db: asyncpg.Pool
    streams: StreamsRedis
    writer: StreamWriter
    queue: ArqRedis
    hub: Hub
    http: httpx.AsyncClient
    slack_clients: dict[str, Any] = field(default_factory=dict)
