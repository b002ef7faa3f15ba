"""What every job of one dispatcher process shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from arq.connections import ArqRedis

from common.hub import Hub
from common.settings import Settings
from common.streams import StreamsRedis, StreamWriter


@dataclass
class Runtime:
    settings: Settings
    db: asyncpg.Pool
    streams: StreamsRedis
    writer: StreamWriter
    queue: ArqRedis
    hub: Hub
    http: httpx.AsyncClient
    slack_clients: dict[str, Any] = field(default_factory=dict)
