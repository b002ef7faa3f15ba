"""Prometheus metrics the ops dashboards rely on: relay counts and lag, queue depth per
feature at scrape time, Postgres pool use (real servers, gateway in-process)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client import REGISTRY

from api.main import create_app
from api.streams.relay import _observe
from common.platform import db
from common.platform.credentials import mint_token
from common.platform.keys import queue_name
from common.streams.hub import HEARTBEAT, Entry
from tests.conftest import Infra, settings_for

AGENTS = """
agents:
  - {id: assistant, feature: default, default: true}
  - {id: depth, feature: depth-probe}
"""


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def entry(ms: int, seq: int = 0) -> Entry:
    return Entry(id=(ms, seq), raw_id=f"{ms}-{seq}".encode(), type=b"token", request_id=b"r", attempt=1, json=b"{}")


def test_relayed_events_are_counted_and_fresh_ones_sampled_for_lag() -> None:
    events, samples = value("relaygate_events_relayed_total"), value("relaygate_relay_lag_seconds_count")
    within = {le: value("relaygate_relay_lag_seconds_bucket", le=le) for le in ("0.0025", "0.05", "+Inf")}
    now = int(time.time() * 1000)
    _observe([entry(now - 5, 0), HEARTBEAT, entry(now - 5, 1)])
    assert value("relaygate_events_relayed_total") == events + 2
    assert value("relaygate_relay_lag_seconds_count") == samples + 1
    # ~5 ms old (the clock read comes after): above the 2.5 ms bound, under 50 ms.
    assert value("relaygate_relay_lag_seconds_bucket", le="0.0025") == within["0.0025"]
    assert value("relaygate_relay_lag_seconds_bucket", le="0.05") == within["0.05"] + 1
    assert value("relaygate_relay_lag_seconds_bucket", le="+Inf") == within["+Inf"] + 1
    assert value("relaygate_relay_lag_seconds_sum") > 0
    _observe([entry(now - 3_600_000)])
    assert value("relaygate_events_relayed_total") == events + 3
    assert value("relaygate_relay_lag_seconds_count") == samples + 1, "an hour-old catch-up entry is not lag"


async def test_pool_use_is_reported_until_the_pool_closes(infra: Infra) -> None:
    pool = await db.create_pool(infra.database_url, min_size=2, max_size=3, name="probe")
    try:
        async with pool.acquire():
            assert value("relaygate_db_pool_in_use_connections", pool="probe") == 1
            assert value("relaygate_db_pool_connections", pool="probe") >= 2
    finally:
        await pool.close()
    assert REGISTRY.get_sample_value("relaygate_db_pool_connections", {"pool": "probe"}) is None


async def test_gateway_metrics_report_each_feature_queue_depth(infra: Infra, tmp_path: Path) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS)
    settings = settings_for(infra, agents_file=agents)
    app = create_app(settings)
    token = mint_token(settings, user_id="ops", tenant_id="ops", scopes=["metrics"])
    queue = queue_name("depth-probe")
    async with app.router.lifespan_context(app):
        redis = app.state.gateway.queue
        await redis.delete(queue)
        await redis.zadd(queue, {"a": 1, "b": 2})
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                response = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        finally:
            await redis.delete(queue)
    assert response.status_code == 200
    assert f'relaygate_queue_depth{{queue="{queue}"}} 2.0' in response.text
    assert 'relaygate_db_pool_connections{pool="gateway"}' in response.text
