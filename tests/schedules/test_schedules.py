"""Scheduled runs end to end: the API, and each tick fired exactly once by three workers, one of them
killed as the ticks come due, a claim left by a dead worker, a tick whose request was sent by a worker
that died before recording it, and one catch-up after downtime. A refused firing is recorded and the
schedule moves on. `deliver` sends the reply through the user's delivery settings, and only then."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import httpx

from api.main import create_app
from common.platform.credentials import mint_token
from common.schedules import firing
from tests.conftest import ROOT, Stack, settings_for, sql, wait_until
from tests.support.delivery import Dispatchers, deliveries, wait_for
from tests.support.streams import wait_status


def client(stack: Stack, user_id: str, tenant_id: str, *scopes: str) -> httpx.Client:
    token = mint_token(settings_for(stack.infra), user_id=user_id, tenant_id=tenant_id, scopes=list(scopes))
    return httpx.Client(base_url=stack.base_url, timeout=30, headers={"Authorization": f"Bearer {token}"})


def requests_of(stack: Stack, schedule_id: str) -> int:
    rows = sql(
        stack, "SELECT count(*) AS n FROM request_logs WHERE idempotency_key LIKE $1", f"schedule:{schedule_id}:%"
    )
    return int(rows[0]["n"])


def fired(stack: Stack, ids: list[str]) -> bool:
    rows = sql(stack, "SELECT runs, next_run_at FROM schedules WHERE schedule_id = ANY($1::uuid[])", ids)
    return all(r["runs"] >= 1 and r["next_run_at"] > datetime.now(UTC) for r in rows)


async def send_without_recording(stack: Stack, schedule_id: str) -> str:
    """What a worker that died after sending a tick's request, before moving the schedule on, leaves."""
    app = create_app(settings_for(stack.infra, agents_file=ROOT / "tests" / "agents.yaml"))
    async with app.router.lifespan_context(app):
        gw = app.state.gateway
        row = await gw.db.fetchrow(
            f"SELECT {firing.FIRING}, next_run_at FROM schedules WHERE schedule_id = $1", uuid.UUID(schedule_id)
        )
        fired_now = await firing.fire(gw, row, row["next_run_at"].isoformat())
        assert fired_now.status == "sent" and fired_now.request_id
        return fired_now.request_id


def test_schedules_fire_each_tick_exactly_once(new_stack: Stack) -> None:
    s = new_stack
    s.start_gateway()
    workers = [s.start_worker(wait=False) for _ in range(3)]
    for worker in workers:
        s.wait_ready(worker)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    with client(s, "ann", tenant) as ann, client(s, "bob", tenant) as bob:
        assert ann.post("/api/v1/schedules", json={"cron": "0 9 * * 1-5 2026", "content": "x"}).status_code == 422
        assert (
            ann.post(
                "/api/v1/schedules", json={"cron": "0 9 * * *", "timezone": "Nowhere/City", "content": "x"}
            ).status_code
            == 422
        )
        created = [
            ann.post(
                "/api/v1/schedules",
                json={"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin", "content": f"summarise tickets {i}"},
            )
            for i in range(4)
        ]
        assert all(r.status_code == 201 for r in created), created[0].text
        ids = [r.json()["schedule_id"] for r in created]
        first = datetime.fromisoformat(created[0].json()["next_run_at"])
        assert first > datetime.now(UTC) and first.weekday() < 5 and first.minute == 0
        assert bob.get(f"/api/v1/schedules/{ids[0]}").status_code == 404
        assert [x["schedule_id"] for x in ann.get("/api/v1/schedules").json()["items"]] == ids

        # Two due ticks claimed by a worker that then died (the claims lapse): one before it sent anything,
        # one after it sent the tick's request but before it moved the schedule on.
        sql(
            s,
            "UPDATE schedules SET next_run_at = now(), claimed_until = now() + interval '3 seconds'"
            " WHERE schedule_id = ANY($1::uuid[])",
            ids[1:3],
        )
        sent_before = asyncio.run(send_without_recording(s, ids[2]))
        sql(s, "UPDATE schedules SET next_run_at = now() WHERE schedule_id = $1::uuid", ids[0])
        # Down for three days (three weekday ticks missed, say): one catch-up firing, then the next tick.
        sql(s, "UPDATE schedules SET next_run_at = now() - interval '3 days' WHERE schedule_id = $1::uuid", ids[3])
        workers[0].kill()
        wait_until(lambda: fired(s, ids), 60, "every due schedule to fire")
        for schedule_id in ids:
            assert requests_of(s, schedule_id) == 1, schedule_id
            shown = ann.get(f"/api/v1/schedules/{schedule_id}").json()
            assert (shown["runs"], shown["last_status"]) == (1, "sent")
            assert wait_status(ann, shown["last_request_id"], {"completed"})["status"] == "completed"
        assert ann.get(f"/api/v1/schedules/{ids[2]}").json()["last_request_id"] == sent_before
        wait_until(lambda: requests_of(s, ids[0]) == 1 and fired(s, ids), 5, "the workers to settle")

        changed = ann.patch(f"/api/v1/schedules/{ids[0]}", json={"cron": "15 7 * * *", "timezone": "UTC"}).json()
        assert changed["next_run_at"].endswith("07:15:00Z") or "T07:15:00" in changed["next_run_at"]
        run = ann.post(f"/api/v1/schedules/{ids[0]}/run")
        assert run.status_code == 202, run.text
        assert wait_status(ann, run.json()["request_id"], {"completed"})["status"] == "completed"
        assert ann.delete(f"/api/v1/schedules/{ids[3]}").status_code == 204
        assert ann.get(f"/api/v1/schedules/{ids[3]}").status_code == 404


def test_a_refused_firing_is_recorded_and_the_schedule_moves_on(stack: Stack) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    with client(stack, "cat", tenant) as cat, client(stack, "root", tenant, "admin") as admin:
        schedule = cat.post("/api/v1/schedules", json={"cron": "0 3 1 1 *", "content": "over budget"}).json()
        first = cat.post(f"/api/v1/schedules/{schedule['schedule_id']}/run").json()
        wait_status(cat, first["request_id"], {"completed"})
        assert admin.put("/api/v1/budgets/users/cat", json={"tokens_per_day": 1}).status_code == 200
        refused = cat.post(f"/api/v1/schedules/{schedule['schedule_id']}/run")
        assert refused.status_code == 429 and "budget: user tokens per day" in refused.json()["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 86400
        sql(stack, "UPDATE schedules SET next_run_at = now() WHERE schedule_id = $1::uuid", schedule["schedule_id"])
        wait_until(lambda: fired(stack, [schedule["schedule_id"]]), 30, "the refused tick to be recorded")
        shown = cat.get(f"/api/v1/schedules/{schedule['schedule_id']}").json()
    assert shown["last_status"] == "refused" and shown["last_error"].startswith("rate_limited: budget:")
    assert shown["runs"] == 3 and requests_of(stack, schedule["schedule_id"]) == 1


def test_deliver_sends_the_reply_through_the_users_delivery_settings(stack: Stack) -> None:
    dispatchers = Dispatchers(stack, {"DELIVERY_RETRY_DELAY_SCALE": "0.01"})
    dispatchers.start()
    try:
        uid, tenant = f"u-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
        with client(stack, uid, tenant) as c:
            assert c.post(f"/api/v1/users/{uid}/integrations", json={"integration_type": "TEST"}).status_code == 201
            sent = {}
            for deliver in (False, True):
                schedule = c.post(
                    "/api/v1/schedules", json={"cron": "0 3 1 1 *", "content": f"deliver {deliver}", "deliver": deliver}
                ).json()
                sent[deliver] = c.post(f"/api/v1/schedules/{schedule['schedule_id']}/run").json()["request_id"]
                assert wait_status(c, sent[deliver], {"completed"})["status"] == "completed"
            rows = wait_for(lambda: [r for r in deliveries(c, uid) if r["status"] == "SUCCESS"])
            assert [(r["request_id"], r["integration_type"]) for r in rows] == [(sent[True], "TEST")]
    finally:
        dispatchers.stop()
