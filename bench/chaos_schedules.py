"""The chaos suite's schedules: each of a few users has one that fires every minute (`* * * * *`), so the
workers' maintenance loops fire ticks while workers are killed and the stores restart.

A tick is fired once: its request is sent under an idempotency key naming the tick, and a worker that
dies mid-tick leaves a claim that lapses for the next one to send the same key. After the run, for every
schedule: every minute boundary from its creation to a little before it was disabled has exactly one
request, the schedule counts as many firings as it has requests, and each of those requests is verified
with all the others (its own session's stream).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chaos_clients import GatewayClient
from chaos_report import Anomalies, spread
from chaos_verify import fetch

# A tick fires within a maintenance interval (10 s), or once a dead worker's claim lapsed (15 s) after that.
FIRING_WINDOW = 30.0


@dataclass
class Schedule:
    schedule_id: str
    client: GatewayClient
    created_at: float
    disabled_at: float = 0.0


async def create(clients: list[GatewayClient]) -> list[Schedule]:
    """One every-minute schedule per client (through a random live gateway)."""
    made = []
    for client in clients:
        body = {"cron": "* * * * *", "timezone": "UTC", "content": f"scheduled tick for client {client.index}"}
        r = await client.send("schedule", "/api/v1/schedules", (201,), body=body)
        made.append(Schedule(r.json()["schedule_id"], client, time.time()))
    return made


async def disable(schedules: list[Schedule]) -> None:
    """No tick after the traffic: what is verified is what fired while the faults ran."""
    for s in schedules:
        path = f"/api/v1/schedules/{s.schedule_id}"
        await s.client.send("schedule", path, (200,), body={"enabled": False}, method="PATCH")
        s.disabled_at = time.time()


async def verify(anomalies: Anomalies, database_url: str, schedules: list[Schedule]) -> dict[str, Any]:
    """Each due tick fired exactly once, and counted once."""
    ids = [s.schedule_id for s in schedules]
    rows = await fetch(
        database_url,
        "SELECT request_id::text AS request_id, idempotency_key, status, extract(epoch FROM created_at)::float8 AS at,"
        " normalized_request->'integration_context'->>'schedule_id' AS schedule_id FROM request_logs"
        " WHERE normalized_request->'integration_context'->>'schedule_id' = ANY($1::text[])",
        ids,
    )
    counted = {
        str(r["schedule_id"]): r["runs"]
        for r in await fetch(database_url, "SELECT schedule_id, runs FROM schedules WHERE schedule_id = ANY($1)", ids)
    }
    fired: dict[str, dict[float, list[str]]] = defaultdict(lambda: defaultdict(list))
    lag: list[float] = []
    for row in rows:
        tick = datetime.fromisoformat(_tick(row["idempotency_key"]))
        fired[row["schedule_id"]][tick.timestamp()].append(row["request_id"])
        lag.append(row["at"] - tick.timestamp())
    for s in schedules:
        ticks = fired.get(s.schedule_id, {})
        first = (int(s.created_at) // 60 + 1) * 60
        due = range(first, int(s.disabled_at - FIRING_WINDOW) + 1, 60)
        missed = [datetime.fromtimestamp(t, UTC).strftime("%H:%M") for t in due if t not in ticks]
        if missed:
            anomalies.add("schedule_tick_missed", schedule_id=s.schedule_id, ticks=missed)
        for tick, requests in ticks.items():
            if len(requests) > 1:
                anomalies.add("schedule_tick_doubled", schedule_id=s.schedule_id, tick=tick, requests=requests)
        if counted.get(s.schedule_id) != sum(len(r) for r in ticks.values()):
            anomalies.add(
                "schedule_runs_mismatch",
                schedule_id=s.schedule_id,
                runs=counted.get(s.schedule_id),
                requests=sum(len(r) for r in ticks.values()),
            )
    return {"schedules": len(schedules), "ticks_fired": len(rows), "tick_to_request": spread(lag)}


def _tick(key: str) -> str:
    """The tick of an idempotency key `schedule:<id>:<tick, ISO 8601>` (the tick has colons of its own)."""
    return key.split(":", 2)[2]
