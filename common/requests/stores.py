"""What request code needs of the process running it: the gateway's `Gateway` and a worker's
`WorkerRuntime` both have these, so the intake and the endings run the same in either."""

from __future__ import annotations

from typing import Protocol

import asyncpg
from arq.connections import ArqRedis

from common.agents.registry import AgentRegistry
from common.platform.settings import Settings
from common.requests.limits import Limits
from common.streams.protocol import StreamsRedis
from common.streams.writer import StreamWriter
from common.usage.budgets import BudgetBook


class Stores(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> asyncpg.Pool: ...

    @property
    def streams(self) -> StreamsRedis: ...

    @property
    def queue(self) -> ArqRedis: ...

    @property
    def writer(self) -> StreamWriter: ...


class IntakeStores(Stores, Protocol):
    """Stores plus what admitting a request reads: the agents, and the limits and budgets (None: not applied)."""

    @property
    def agents(self) -> AgentRegistry: ...

    @property
    def limits(self) -> Limits | None: ...

    @property
    def budgets(self) -> BudgetBook | None: ...
