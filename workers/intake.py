"""The gateway's one request intake (api.requests.service.accept) over a worker's stores: schedules and flow
`agent` tasks send their requests through it, with the same limits, budgets, counters and announce."""

from __future__ import annotations

from typing import Any

from api.deps import Gateway
from api.requests.schemas import _RequestBody
from common.requests.limits import Limits
from common.requests.models import IntegrationType
from common.usage.budgets import BudgetBook
from workers.runner import Runtime

_gateways: dict[int, Gateway] = {}


def gateway(rt: Runtime) -> Gateway:
    """The intake as the gateway runs it, over this worker's stores (it never reads a hub)."""
    gw = _gateways.get(id(rt))
    if gw is None:
        hub: Any = None
        gw = _gateways[id(rt)] = Gateway(
            settings=rt.settings,
            db=rt.db,
            streams=rt.streams,
            queue=rt.queue,
            hub=hub,
            writer=rt.writer,
            agents=rt.agents,
            limits=Limits(rt.streams, rt.settings),
            budgets=BudgetBook(rt.db, rt.settings),
        )
    return gw


class FlowAgentRequest(_RequestBody):
    """The request a flow's `agent` task sends for the run's user, in the run's session."""

    run_id: str
    task_id: str

    def integration(self) -> IntegrationType:
        return "tool"

    def integration_context(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "task_id": self.task_id}
