"""Budgets across two gateway processes: replies already running finish, then both refuse the next
request at once (the workers' finishes fed the shared count in Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Stack, stack_env
from tests.support.streams import offline, wait_status

BUDGET = 10  # tokens per user per day: one offline reply spends more


@pytest.fixture
def gateways(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Stack]]:
    """Two more gateway processes with a user budget; the shared stack's workers serve them."""
    started = []
    try:
        for _ in range(2):
            gw = Stack(
                stack.infra,
                tmp_path_factory.mktemp("budget-gateway"),
                stack_env(stack.infra, BUDGET_USER_TOKENS_PER_DAY=str(BUDGET)),
            )
            started.append(gw)
            gw.start_gateway()
        yield started
    finally:
        for gw in started:
            gw.stop()


def test_two_gateways_refuse_together_once_the_budget_is_spent(gateways: list[Stack]) -> None:
    one, two = gateways
    user, tenant = "spender", f"tenant-{uuid.uuid4().hex[:8]}"
    with one.client(user, tenant) as a, two.client(user, tenant) as b:
        running = [
            c.post(
                "/api/v1/requests/web", json={"content": "spend", "new_session": True, "metadata": offline(30, 60)}
            ).json()
            for c in (a, b)
        ]
        for accepted in running:
            assert wait_status(a, accepted["request_id"], {"completed", "failed", "cancelled"})["status"] == "completed"
        spent = sum(wait_status(a, r["request_id"], {"completed"})["usage"]["output_tokens"] for r in running)
        assert spent == 60

        async def both() -> list[httpx.Response]:
            async with (
                httpx.AsyncClient(base_url=one.base_url, headers=a.headers) as x,
                httpx.AsyncClient(base_url=two.base_url, headers=b.headers) as y,
            ):
                return list(
                    await asyncio.gather(*(c.post("/api/v1/requests/web", json={"content": "more"}) for c in (x, y)))
                )

        for refused in asyncio.run(both()):
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"] == "rate_limited"
            assert refused.json()["detail"].startswith("budget: user tokens per day:")
            assert 1 <= int(refused.headers["retry-after"]) <= 86400
        left = a.get("/api/v1/budgets/me").json()["budgets"]
    day = next(x for x in left if (x["scope"], x["period"]) == ("user", "day"))
    assert day["tokens"]["remaining"] == 0 and day["tokens"]["used"] > BUDGET
