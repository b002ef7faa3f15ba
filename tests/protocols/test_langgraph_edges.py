"""The `/langgraph` routes in-process: retries, failures, expired streams, limits and errors in LangGraph's shape.

No worker serves these agents: the tests write a run's stream entries (and its row) themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import RateLimitError

from api.langgraph.messages import ai_id
from common.platform.credentials import SCOPE_SESSIONS
from common.platform.keys import stream_key
from common.streams.protocol import Event
from tests.support.app import App

SAY = {"messages": [{"type": "human", "content": [{"type": "text", "text": "hi there"}], "id": "client-msg-1"}]}


def _sdk(app: App, client: httpx.AsyncClient) -> LangGraphClient:
    """The real SDK over the in-process app, with the test client's credentials."""
    return LangGraphClient(
        httpx.AsyncClient(
            transport=app.transport, base_url="http://gateway/langgraph", headers=dict(client.headers), timeout=10
        )
    )


async def _queued_run(client: httpx.AsyncClient, modes: list[str] | None = None) -> tuple[str, str]:
    tid = (await client.post("/langgraph/threads", json={})).json()["thread_id"]
    run = await client.post(
        f"/langgraph/threads/{tid}/runs",
        json={"assistant_id": "assistant", "input": SAY, "stream_mode": modes or ["values", "messages-tuple"]},
    )
    assert run.status_code == 200, run.text
    assert run.json()["status"] == "pending"
    return tid, run.json()["run_id"]


async def _finish(
    app: App, run_id: str, status: str, *, response: str | None = None, error: str | None = None, attempt: int = 1
) -> None:
    await app.gateway.db.execute(
        "UPDATE request_logs SET status = $2, response_content = $3, error = $4, attempt = $5, completed_at = now()"
        " WHERE request_id = $1",
        run_id,
        status,
        response,
        error,
        attempt,
    )


def _events(run_id: str, *steps: tuple[str, int, dict[str, Any]]) -> list[Event]:
    return [
        Event(type=kind, request_id=run_id, attempt=attempt, seq=n, data=data)  # type: ignore[arg-type]
        for n, (kind, attempt, data) in enumerate(steps)
    ]


async def test_a_retry_never_shows_two_attempts_text_as_one(app: App) -> None:
    async with app.client() as client:
        tid, rid = await _queued_run(client)
        await app.gateway.writer.append(
            tid,
            _events(
                rid,
                ("run.started", 1, {}),
                ("token", 1, {"text": "Lost "}),
                ("token", 1, {"text": "partial"}),
                ("run.retrying", 2, {"attempt": 2}),
                ("run.started", 2, {}),
                ("token", 1, {"text": " straggler of the lost attempt"}),
                ("token", 2, {"text": "Fresh "}),
                ("token", 2, {"text": "reply"}),
                ("message", 2, {"content": "Fresh reply", "agent_id": "assistant"}),
                ("run.completed", 2, {}),
                ("done", 2, {"request_id": rid, "status": "completed"}),
            ),
        )
        parts = [p async for p in _sdk(app, client).runs.join_stream(tid, rid, last_event_id="-1")]
    text_by_message: dict[str, str] = {}
    for part in parts:
        if part.event == "messages":
            chunk = part.data[0]
            text_by_message[chunk["id"]] = text_by_message.get(chunk["id"], "") + chunk["content"]
    assert text_by_message == {ai_id(rid, 1): "Lost partial", ai_id(rid, 2): "Fresh reply"}
    assert [p.data["attempt"] for p in parts if p.event == "metadata"] == [1, 2]
    values = [[(m["type"], m["content"]) for m in p.data["messages"]] for p in parts if p.event == "values"]
    # The retry's state takes the lost partial reply back; the end state holds the new attempt's reply only.
    assert values == [[("human", "hi there")], [("human", "hi there")], [("human", "hi there"), ("ai", "Fresh reply")]]
    assert parts[-1].event == "end"
    human = next(p for p in parts if p.event == "values").data["messages"][0]
    assert human["id"] == "client-msg-1"


async def test_join_stream_answers_with_a_location_relative_to_the_sdk_base(app: App) -> None:
    async with app.client() as client:
        tid, rid = await _queued_run(client)
        await app.gateway.writer.append(
            tid, _events(rid, ("run.cancelled", 1, {"reason": "x"}), ("done", 1, {"request_id": rid}))
        )
        response = await client.get(f"/langgraph/threads/{tid}/runs/{rid}/stream", headers={"Last-Event-ID": "-1"})
    assert response.headers["location"] == f"/threads/{tid}/runs/{rid}/stream"
    assert response.headers["content-location"] == f"/threads/{tid}/runs/{rid}"
    assert response.headers["content-type"].startswith("text/event-stream")
    assert [line for line in response.text.splitlines() if line.startswith("event:")] == [
        "event: metadata",
        "event: end",
    ]


async def test_a_failed_run_ends_with_error_then_end(app: App) -> None:
    async with app.client() as client:
        tid, rid = await _queued_run(client)
        await app.gateway.writer.append(
            tid,
            _events(
                rid,
                ("run.started", 1, {}),
                ("run.failed", 1, {"error": "the model provider refused the request"}),
                ("done", 1, {"request_id": rid}),
            ),
        )
        await _finish(app, rid, "failed", error="the model provider refused the request")
        sdk = _sdk(app, client)
        parts = [p async for p in sdk.runs.join_stream(tid, rid, last_event_id="-1")]
        assert [p.event for p in parts] == ["metadata", "values", "error", "end"]
        assert parts[2].data == {"error": "RunError", "message": "the model provider refused the request"}
        assert (await sdk.runs.get(tid, rid))["status"] == "error"
        assert (await sdk.threads.get(tid))["status"] == "error"
        joined = await sdk.runs.join(tid, rid)
        assert joined == {"__error__": {"error": "RunError", "message": "the model provider refused the request"}}

        tid2, rid2 = await _queued_run(client)
        await _finish(app, rid2, "failed", error="timed out")
        assert (await sdk.runs.get(tid2, rid2))["status"] == "timeout"


async def test_a_finished_run_whose_stream_expired_is_told_from_postgres(app: App) -> None:
    async with app.client() as client:
        tid, rid = await _queued_run(client, ["updates", "values"])
        await _finish(app, rid, "completed", response="Stored reply", attempt=2)
        await app.gateway.streams.delete(stream_key(tid, app.settings.stream_buckets))
        parts = [p async for p in _sdk(app, client).runs.join_stream(tid, rid, last_event_id="-1")]
    assert [p.event for p in parts] == ["metadata", "updates", "values", "end"]
    assert parts[2].data["messages"][-1] == {
        **parts[1].data["assistant"]["messages"][0],
        "content": "Stored reply",
        "id": ai_id(rid, 2),
    }


async def test_limits_are_429_in_langgraphs_shape(make_app: Callable[..., Any]) -> None:
    async with make_app(max_running_requests_per_user=1) as app, app.client() as client:
        await _queued_run(client)
        tid = (await client.post("/langgraph/threads", json={})).json()["thread_id"]
        refused = await client.post(f"/langgraph/threads/{tid}/runs", json={"assistant_id": "assistant", "input": SAY})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert list(refused.json()) == ["detail"] and refused.json()["detail"].startswith("running_requests_per_user")
        with pytest.raises(RateLimitError):
            await _sdk(app, client).runs.create(tid, "assistant", input=SAY)


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"input": SAY}, 422, "body.assistant_id: Field required"),
        ({"assistant_id": "nobody", "input": SAY}, 404, "assistant 'nobody' not found"),
        ({"assistant_id": "assistant", "command": {"resume": "yes"}}, 422, "command is not supported"),
        ({"assistant_id": "assistant", "input": SAY, "multitask_strategy": "rollback"}, 422, "multitask_strategy"),
        ({"assistant_id": "assistant", "input": SAY, "stream_mode": ["telepathy"]}, 422, "body.stream_mode"),
        (
            {"assistant_id": "assistant", "input": {"messages": [{"role": "assistant", "content": "hm"}]}},
            422,
            "no human (user) message",
        ),
        (
            {
                "assistant_id": "assistant",
                "input": {"messages": [{"type": "human", "content": [{"type": "image_url", "image_url": "x"}]}]},
            },
            422,
            "'image_url' is not supported",
        ),
        (
            {"assistant_id": "assistant", "input": {"messages": [{"role": "user", "content": "x" * 100_001}]}},
            422,
            "content: String should have at most 100000 characters",
        ),
    ],
)
async def test_refused_runs_say_why_in_langgraphs_shape(
    app: App, body: dict[str, Any], status: int, detail: str
) -> None:
    async with app.client() as client:
        tid = (await client.post("/langgraph/threads", json={})).json()["thread_id"]
        response = await client.post(f"/langgraph/threads/{tid}/runs", json=body)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["detail"] and detail in response.json()["detail"], response.json()


async def test_credentials_and_scopes(app: App) -> None:
    async with app.client(headers={}) as anonymous:
        response = await anonymous.post("/langgraph/threads", json={})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"detail": "missing credentials: send Authorization: Bearer <token> or x-api-key"}
    async with app.client(scopes=[SCOPE_SESSIONS]) as sessions_only:
        tid = (await sessions_only.post("/langgraph/threads", json={})).json()["thread_id"]
        refused = await sessions_only.post(
            f"/langgraph/threads/{tid}/runs", json={"assistant_id": "assistant", "input": SAY}
        )
    assert refused.status_code == 403 and refused.json() == {"detail": "this credential lacks the 'requests' scope"}


async def test_threads_by_id_metadata_and_status(app: App) -> None:
    async with app.client() as client:
        sdk = _sdk(app, client)
        chosen = str(uuid.uuid4())
        made = await sdk.threads.create(thread_id=chosen, metadata={"team": "blue"})
        assert made["thread_id"] == chosen and made["values"] == {"messages": []}
        assert (await sdk.threads.create(thread_id=chosen, if_exists="do_nothing"))["thread_id"] == chosen
        assert (await client.post("/langgraph/threads", json={"thread_id": chosen})).status_code == 409
        busy_tid, _ = await _queued_run(client)
        created = str(uuid.uuid4())
        run = await sdk.runs.create(created, "assistant", input=SAY, if_not_exists="create")
        assert run["thread_id"] == created
        assert [t["thread_id"] for t in await sdk.threads.search(metadata={"team": "blue"})] == [chosen]
        busy = {t["thread_id"] for t in await sdk.threads.search(status="busy", limit=100)}
        assert busy == {busy_tid, created}
        assert [
            t["thread_id"]
            for t in await sdk.threads.search(ids=[chosen, busy_tid], sort_by="thread_id", sort_order="asc")
        ] == sorted([chosen, busy_tid])
        [state] = await sdk.threads.get_history(busy_tid)
        assert state["values"] == {"messages": []}  # a queued run's input is not in the state yet
