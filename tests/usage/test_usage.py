"""Usage and cost, end to end: a worker on the fake provider (with and without a usage trailer), the
offline model, `run.completed`'s `usage`, the request's totals, the usage API's rollup and its scoping,
and the worker's Prometheus counters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import litellm
import pytest

from cli.dev.embedded import free_port
from common.platform.credentials import mint_token
from tests.conftest import Stack, settings_for, wait_until
from tests.fakes.openai_api import FakeOpenAI
from tests.support.streams import done_for, offline, read_until, wait_status

MODEL = "openai/fake-model"
PRICE_IN, PRICE_OUT = 1.5, 4.0  # tests/agents.yaml `prices` for MODEL, USD per million tokens
METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def metered(stack: Stack, fake: FakeOpenAI) -> Iterator[Stack]:
    with stack.serving(
        "metered",
        LLM_MODEL=MODEL,
        LLM_API_BASE=fake.base_url,
        LLM_API_KEY="sk-test",
        LLM_RETRIES="1",
        LEASE_SECONDS="30",
        WORKER_METRICS_PORT=str(METRICS_PORT),
    ) as served:
        yield served


def client(stack: Stack, user_id: str, tenant_id: str, *scopes: str) -> httpx.Client:
    token = mint_token(settings_for(stack.infra), user_id=user_id, tenant_id=tenant_id, scopes=list(scopes))
    return httpx.Client(base_url=stack.base_url, timeout=30, headers={"Authorization": f"Bearer {token}"})


def ask(c: httpx.Client, content: str, agent_id: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    """Send a request, read its stream to `done`; returns (request id, its terminal event's data)."""
    r = c.post("/api/v1/requests/web", json={"content": content, "agent_id": agent_id, "new_session": True, **extra})
    assert r.status_code == 202, r.text
    rid = r.json()["request_id"]
    events = read_until(c, r.json()["stream_url"], done_for(rid))
    terminal = [
        e.json()["data"] for e in events if e.event in ("run.completed", "run.failed") and e.json()["request_id"] == rid
    ]
    return rid, terminal[-1]


def test_provider_usage_is_taken_and_priced_with_the_override(metered: Stack, fake: FakeOpenAI) -> None:
    fake.usage_trailer = True
    reply = "four words of reply"
    fake.reply(reply)
    try:
        with metered.client() as c:
            rid, completed = ask(c, f"usage please {uuid.uuid4().hex[:6]}", "metered")
            stored = wait_status(c, rid, {"completed"})
    finally:
        fake.usage_trailer = False
    assert fake.calls[-1].body.get("stream_options") == {"include_usage": True}
    # The fake reports 3 prompt tokens and one completion token per word.
    expected = {
        "input_tokens": 3,
        "output_tokens": 4,
        "estimated": False,
        "cost_usd": pytest.approx((3 * PRICE_IN + 4 * PRICE_OUT) / 1e6),
    }
    assert completed["usage"] == expected
    assert stored["usage"] == expected


def test_without_provider_usage_tokens_are_counted_and_marked_estimated(metered: Stack, fake: FakeOpenAI) -> None:
    reply = "a reply whose provider sends no usage at all"
    fake.reply(reply)
    with metered.client() as c:
        rid, completed = ask(c, "count my tokens", "metered")
        stored = wait_status(c, rid, {"completed"})
    usage = completed["usage"]
    counted_out = litellm.token_counter(model=MODEL, text=reply)
    assert usage["estimated"] is True
    assert usage["output_tokens"] == counted_out
    assert usage["input_tokens"] > litellm.token_counter(model=MODEL, text="count my tokens")  # + system prompt
    assert usage["cost_usd"] == pytest.approx((usage["input_tokens"] * PRICE_IN + counted_out * PRICE_OUT) / 1e6)
    assert stored["usage"] == usage


def test_litellm_cost_map_prices_a_model_without_override(metered: Stack, fake: FakeOpenAI) -> None:
    fake.usage_trailer = True
    fake.reply("two words")
    try:
        with metered.client() as c:
            _, completed = ask(c, "price me from the map", "metered-mapped")
    finally:
        fake.usage_trailer = False
    prompt_cost, completion_cost = litellm.cost_per_token(
        model="openai/gpt-4o-mini", prompt_tokens=3, completion_tokens=2
    )
    assert completed["usage"]["cost_usd"] == pytest.approx(prompt_cost + completion_cost)
    assert completed["usage"]["cost_usd"] > 0


def test_offline_model_reports_its_tokens_at_no_cost(stack: Stack) -> None:
    with stack.client() as c:
        rid, completed = ask(c, "offline usage", "assistant", metadata=offline(7, 0))
        stored = wait_status(c, rid, {"completed"})
    assert completed["usage"]["output_tokens"] == 7
    assert completed["usage"]["input_tokens"] > 0
    assert (completed["usage"]["cost_usd"], completed["usage"]["estimated"]) == (0, False)
    assert stored["usage"] == completed["usage"]


def test_usage_api_groups_from_the_rollup_within_the_tenant(metered: Stack, fake: FakeOpenAI) -> None:
    tenant, other = f"tenant-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    fake.usage_trailer = True
    try:
        with (
            client(metered, "ann", tenant) as ann,
            client(metered, "bob", tenant) as bob,
            client(metered, "eve", other) as eve,
        ):
            ask(ann, "one", "metered")
            ask(ann, "two", "metered")
            fake.fail(400, message="refused by the fake", type="invalid_request_error")
            _, failed = ask(bob, "three", "metered")
            assert "refused by the fake" in failed["error"]
            ask(eve, "elsewhere", "metered")
            r = bob.post("/api/v1/requests/web", json={"content": "never runs", "agent_id": "orphan"})
            assert bob.post(f"/api/v1/requests/{r.json()['request_id']}/cancel").status_code == 202
    finally:
        fake.usage_trailer = False
    with client(metered, "root", tenant, "admin") as admin, client(metered, "ann", tenant) as ann:
        wait_until(lambda: admin.get("/api/v1/usage").json()["total"]["requests"] == 4, 10, "the rollup")
        by_user = {row["user"]: row for row in admin.get("/api/v1/usage", params={"group_by": "user"}).json()["rows"]}
        assert set(by_user) == {"ann", "bob"}
        assert by_user["ann"] | {"cost_usd": 0} == {
            "user": "ann",
            "requests": 2,
            "completed": 2,
            "failed": 0,
            "cancelled": 0,
            "input_tokens": 6,
            "output_tokens": 10,
            "cost_usd": 0,
        }
        assert by_user["ann"]["cost_usd"] == pytest.approx((6 * PRICE_IN + 10 * PRICE_OUT) / 1e6)
        assert (by_user["bob"]["requests"], by_user["bob"]["failed"], by_user["bob"]["cancelled"]) == (2, 1, 1)
        by_agent = {
            row["agent"]: row["requests"]
            for row in admin.get("/api/v1/usage", params={"group_by": "agent"}).json()["rows"]
        }
        assert by_agent == {"metered": 3, "orphan": 1}
        by_model = {
            row["model"]: row["output_tokens"]
            for row in admin.get("/api/v1/usage", params={"group_by": "model"}).json()["rows"]
        }
        assert by_model[MODEL] == 10
        days = admin.get("/api/v1/usage", params={"group_by": "day"}).json()["rows"]
        assert [d["requests"] for d in days] == [4]
        own = ann.get("/api/v1/usage", params={"group_by": "user"}).json()
        assert [row["user"] for row in own["rows"]] == ["ann"]
        csv = admin.get("/api/v1/usage", params={"group_by": "user"}, headers={"Accept": "text/csv"})
        assert csv.headers["content-type"].startswith("text/csv")
        lines = csv.text.splitlines()
        assert lines[0] == "user,requests,completed,failed,cancelled,input_tokens,output_tokens,cost_usd"
        assert [line.split(",")[:2] for line in lines[1:]] == [["ann", "2"], ["bob", "2"]]
        bad = admin.get("/api/v1/usage", params={"from": "2026-02-01", "to": "2026-01-01"})
        assert (bad.status_code, bad.json()["error"]) == (422, "validation_error")
    with client(metered, "root", other, "admin") as admin_other:
        rows = admin_other.get("/api/v1/usage", params={"group_by": "user"}).json()["rows"]
        assert [row["user"] for row in rows] == ["eve"]


def test_worker_counts_tokens_and_cost_by_agent_and_model(metered: Stack, fake: FakeOpenAI) -> None:
    fake.usage_trailer = True
    fake.reply("counted in prometheus")
    try:
        with metered.client() as c:
            ask(c, "metrics please", "metered")
    finally:
        fake.usage_trailer = False
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics").text
    labels = f'agent="metered",direction="output",model="{MODEL}"'
    assert f"relaygate_usage_tokens_total{{{labels}}}" in text
    assert f'relaygate_usage_cost_usd_total{{agent="metered",model="{MODEL}"}}' in text
    assert "user" not in next(line for line in text.splitlines() if line.startswith("relaygate_usage_tokens_total"))
