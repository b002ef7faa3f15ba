"""A flow run whose worker process died is found by the process's presence (gone from Postgres's locks and
from Redis), as a request is (tests/requests/test_lost_workers.py): requeued long before its lease lapses,
while a holder present in either store keeps it. On real Postgres and Valkey."""

from __future__ import annotations

import uuid
from typing import Any

from common.flows.runs import RunStore
from common.platform.keys import presence_key
from common.platform.presence import judge
from tests.flows.conftest import dag, task

LEASE, UNRENEWED = 600.0, 0.5


async def test_a_gone_holders_run_is_requeued_and_a_present_ones_kept(gateway_app: Any) -> None:
    gw = await gateway_app(flow_feature=f"nobody-{uuid.uuid4().hex[:6]}")  # no worker takes these runs
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    runs = RunStore.of(gw.gateway)
    gone, present = 2_000_000_011, 2_000_000_012  # presence keys no process holds a lock for
    await gw.gateway.streams.set(presence_key(present), 1, px=10_000)  # cut off from Postgres, heard in Redis
    ids = {}
    async with gw.client("alice", tenant) as c:
        for holder in (gone, present):
            r = await c.post(
                "/v1/runs", json={"flow_id": "f1", "tenant_id": tenant, "flow_definition": dag(tenant, task("a"))}
            )
            ids[holder] = r.json()["run_id"]
            # Claimed by `holder`, last renewed 5 s ago (a beat sets the lease LEASE ahead).
            await gw.gateway.db.execute(
                "UPDATE flow_runs_audit SET status = 'RUNNING', lease_holder = $2,"
                " lease_expires_at = now() + make_interval(secs => $3 - 5) WHERE run_id = $1",
                ids[holder],
                holder,
                LEASE,
            )
    # The suite's workers reap these runs too (the same rule): whoever does, the state must come out right.
    for _ in range(3):
        _, unlocked = await runs.suspects(UNRENEWED, LEASE)
        gone_now, _ = await judge(gw.gateway.streams, [], unlocked, outage=False)
        assert present not in gone_now
        _, failed = await runs.reap_expired(5, gone_now, UNRENEWED, LEASE)
        assert not failed
    found = dict(
        (r["run_id"], (r["status"], r["attempt"]))
        for r in await gw.gateway.db.fetch(
            "SELECT run_id, status, attempt FROM flow_runs_audit WHERE run_id = ANY($1::text[])", list(ids.values())
        )
    )
    assert found == {ids[gone]: ("PENDING", 2), ids[present]: ("RUNNING", 1)}
