"""Requests end to end: gateway and workers as processes, real Postgres and Valkey."""

from __future__ import annotations

import concurrent.futures
import uuid

from tests.conftest import Stack
from tests.support.streams import done_for, offline, read_until, text_of, wait_status
from workers.offline_model import compose_reply


def test_reply_streams_in_order_and_is_stored(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/api/v1/requests/web", json={"content": "Hello relaygate", "metadata": offline(40, 200)})
        assert r.status_code == 202, r.text
        accepted = r.json()
        assert accepted["stream_url"] == f"/api/v1/sessions/{accepted['session_id']}/stream"
        events = read_until(c, accepted["stream_url"], done_for(accepted["request_id"]))
        types = [e.event for e in events]
        assert types[0] == "request.accepted"
        assert types.index("run.started") < types.index("token") < types.index("message")
        started = next(e for e in events if e.event == "run.started").json()["data"]
        assert set(started) == {"agent_id", "model"}  # the worker's host:pid stays inside
        assert types[-3:] == ["message", "run.completed", "done"]
        ids = [tuple(map(int, e.id.split("-"))) for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        seqs = [e.json()["seq"] for e in events if e.json()["attempt"] == 1 and e.event != "request.accepted"]
        assert seqs == sorted(seqs)
        expected = "".join(compose_reply("Hello relaygate", 40))
        assert text_of(events, accepted["request_id"]) == expected
        assert events[-3].json()["data"]["content"] == expected
        stored = wait_status(c, accepted["request_id"], {"completed"})
        assert stored["status"] == "completed"
        assert stored["response"] == expected
        assert stored["agent_id"] == "assistant"
        assert stored["processing_time_ms"] is not None
        session = c.get(f"/api/v1/sessions/{accepted['session_id']}").json()
        assert session["total_requests"] == 1 and session["integration_type"] == "web"
        assert session["current_agent_id"] == "assistant"


def test_routing_rules_and_history(stack: Stack) -> None:
    with stack.client() as c:
        first = c.post(
            "/api/v1/requests/cli?wait=20",
            json={
                "content": "my laptop is slow",
                "new_session": True,
                "metadata": {"terminal": "xterm", "command": "chat"},
            },
        )
        assert first.status_code == 200, first.text
        assert first.json()["agent_id"] == "it-support"
        sid = first.json()["session_id"]
        second = c.post("/api/v1/requests/cli?wait=20", json={"content": "thanks", "session_id": sid})
        assert second.json()["session_id"] == sid
        history = c.get(f"/api/v1/sessions/{sid}/requests").json()["items"]
        assert [h["content"] for h in history] == ["my laptop is slow", "thanks"]
        assert all(h["status"] == "completed" for h in history)


def test_two_sessions_at_once(stack: Stack) -> None:
    with stack.client() as c:

        def run(text: str) -> tuple[str, str]:
            r = c.post(
                "/api/v1/requests/web", json={"content": text, "new_session": True, "metadata": offline(60, 100)}
            )
            body = r.json()
            events = read_until(c, body["stream_url"], done_for(body["request_id"]))
            session = c.get(f"/api/v1/sessions/{body['session_id']}").json()
            assert session["status"] == "active" and session["integration_type"] == "web"
            assert session["total_requests"] == 1 and session["last_request_id"] == body["request_id"]
            assert session["last_request_at"] and session["expires_at"] > session["last_request_at"]
            return body["session_id"], text_of(events, body["request_id"])

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            a, b = pool.map(run, ["first session", "second session"])
        assert a[0] != b[0]
        assert a[1] == "".join(compose_reply("first session", 60))
        assert b[1] == "".join(compose_reply("second session", 60))


def test_one_request_at_a_time_in_arrival_order(stack: Stack) -> None:
    with stack.client() as c:
        sid = c.post("/api/v1/sessions", json={"integration_type": "web"}).json()["session_id"]
        ids = [
            c.post(
                "/api/v1/requests/web", json={"content": f"turn {i}", "session_id": sid, "metadata": offline(20, 100)}
            ).json()["request_id"]
            for i in range(3)
        ]
        events = read_until(c, f"/api/v1/sessions/{sid}/stream", done_for(ids[-1]))
        starts = [e.json()["request_id"] for e in events if e.event == "run.started"]
        assert starts == ids
        # No run starts before the previous one is done.
        running = None
        for e in events:
            if e.event == "run.started":
                assert running is None
                running = e.json()["request_id"]
            elif e.event == "done":
                running = None


def test_multitask_reject_and_interrupt(stack: Stack) -> None:
    with stack.client() as c:
        sid = c.post("/api/v1/sessions", json={}).json()["session_id"]
        slow = c.post(
            "/api/v1/requests/web", json={"content": "long one", "session_id": sid, "metadata": offline(400, 40)}
        ).json()
        wait_status(c, slow["request_id"], {"running"})
        rejected = c.post("/api/v1/requests/web", json={"content": "no", "session_id": sid, "multitask": "reject"})
        assert rejected.status_code == 409
        assert rejected.json()["error"] == "conflict"
        queued = c.post("/api/v1/requests/web", json={"content": "queued", "session_id": sid}).json()
        urgent = c.post(
            "/api/v1/requests/web",
            json={"content": "urgent", "session_id": sid, "multitask": "interrupt", "metadata": offline(10, 100)},
        ).json()
        events = read_until(c, f"/api/v1/sessions/{sid}/stream", done_for(urgent["request_id"]))
        by_request = {e.json()["request_id"]: [] for e in events}
        for e in events:
            by_request[e.json()["request_id"]].append(e.event)
        assert "run.cancelled" in by_request[slow["request_id"]]
        assert "run.started" not in by_request[queued["request_id"]]
        assert "run.cancelled" in by_request[queued["request_id"]]
        assert by_request[urgent["request_id"]][-3:] == ["message", "run.completed", "done"]
        assert wait_status(c, slow["request_id"], {"cancelled"})["status"] == "cancelled"
        assert wait_status(c, queued["request_id"], {"cancelled"})["status"] == "cancelled"
        assert (
            c.post(
                "/api/v1/requests/web", json={"content": "free now", "session_id": sid, "multitask": "reject"}
            ).status_code
            == 202
        )


def test_cancel_running_request(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post(
            "/api/v1/requests/web", json={"content": "cancel me", "new_session": True, "metadata": offline(500, 50)}
        ).json()
        wait_status(c, r["request_id"], {"running"})
        cancel = c.post(f"/api/v1/requests/{r['request_id']}/cancel")
        assert cancel.status_code == 202
        events = read_until(c, r["stream_url"], done_for(r["request_id"]))
        assert [e.event for e in events][-2:] == ["run.cancelled", "done"]
        stored = wait_status(c, r["request_id"], {"cancelled"})
        assert stored["status"] == "cancelled"
        assert len(stored["response"] or "") < len("".join(compose_reply("cancel me", 500)))
        again = c.post(f"/api/v1/requests/{r['request_id']}/cancel")
        assert again.status_code == 409


def test_idempotency_key_returns_the_same_request(stack: Stack) -> None:
    key = uuid.uuid4().hex
    with stack.client() as c:
        body = {"content": "only once", "new_session": True}
        first = c.post("/api/v1/requests/web", json=body, headers={"Idempotency-Key": key})
        second = c.post("/api/v1/requests/web", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == second.status_code == 202
        assert first.json()["request_id"] == second.json()["request_id"]
        assert second.headers["Idempotent-Replayed"] == "true"
        other = c.post("/api/v1/requests/web", json={**body, "content": "different"}, headers={"Idempotency-Key": key})
        assert other.status_code == 409
        history = c.get(f"/api/v1/sessions/{first.json()['session_id']}/requests").json()["items"]
        assert len(history) == 1


def test_wait_returns_the_finished_reply(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post(
            "/api/v1/requests/generic",
            json={"content": "wait for me", "integration_type": "test"},
            headers={"Prefer": "wait=20"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "completed"
        assert body["response"] == "".join(compose_reply("wait for me", 30))
        assert r.headers["Preference-Applied"] == "wait=20"
        slow = c.post(
            "/api/v1/requests/web?wait=0.2", json={"content": "slow", "new_session": True, "metadata": offline(200, 50)}
        )
        assert slow.status_code == 202


def test_post_can_stream_its_own_events(stack: Stack) -> None:
    with stack.client() as c:
        body = {
            "content": "stream me",
            "tool_id": "snow",
            "trigger_event": "ticket.created",
            "tool_context": {"ticket": "INC1"},
        }
        with c.stream("POST", "/api/v1/requests/tool", json=body, headers={"Accept": "text/event-stream"}) as r:
            assert r.status_code == 200
            from cli.sse import iter_events

            events = list(iter_events(r))
        assert events[0].event == "request.accepted"
        assert events[-1].event == "done"
        assert "".join(e.json()["data"]["text"] for e in events if e.event == "token") == "".join(
            compose_reply("stream me", 30)
        )


def test_compat_stream_endpoint(stack: Stack) -> None:
    chat = uuid.uuid4().hex[:8]
    with stack.client() as c:
        with c.stream("POST", f"/stream?feature_id=default&chat_id={chat}") as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert any('"type":"token"' in line for line in lines)
        # The chat's stream exists now: a second call relays the same generation, not a new one.
        with c.stream("POST", f"/stream?feature_id=default&chat_id={chat}") as r:
            again = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert again == lines
        assert c.post(f"/stream?feature_id=nope&chat_id={chat}").status_code == 404
        # Once the chat's session has ended, the chat starts a new session and generation.
        session = next(
            s
            for s in c.get("/api/v1/sessions").json()["items"]
            if s["external_session_id"] and s["external_session_id"].endswith(f":{chat}")
        )
        assert c.post(f"/api/v1/sessions/{session['session_id']}/end").status_code == 200
        with c.stream("POST", f"/stream?feature_id=default&chat_id={chat}") as r:
            assert r.status_code == 200
            fresh = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert fresh[-1] == "data: [DONE]" and fresh != lines
        renewed = [
            s
            for s in c.get("/api/v1/sessions").json()["items"]
            if s["external_session_id"] == session["external_session_id"]
        ]
        assert [s["status"] for s in renewed] == ["active", "inactive"]


def test_validation_and_size_limits(stack: Stack) -> None:
    with stack.client() as c:
        missing = c.post("/api/v1/requests/web", json={"client_ip": "1.2.3.4"})
        assert missing.status_code == 422
        assert any(d["field"] == "body.content" for d in missing.json()["detail"])
        malformed = c.post("/api/v1/requests/web", content=b"{not json", headers={"Content-Type": "application/json"})
        assert malformed.status_code == 422
        assert malformed.json()["error"] == "validation_error"
        huge = c.post("/api/v1/requests/web", json={"content": "x" * 300_000})
        assert huge.status_code == 413
        assert huge.json()["error"] == "payload_too_large"
        bad_tool = c.post("/api/v1/requests/tool", json={"content": "x", "trigger_event": "e"})
        assert bad_tool.status_code == 422
        assert any(d["field"] == "body.tool_id" for d in bad_tool.json()["detail"])
        unknown_agent = c.post("/api/v1/requests/web", json={"content": "x", "agent_id": "nobody"})
        assert unknown_agent.status_code == 422
        bad_id = c.get("/api/v1/sessions/not-a-uuid")
        assert bad_id.status_code == 404


def test_sessions_listing_paging_and_end(stack: Stack) -> None:
    with stack.client() as c:
        made = [c.post("/api/v1/sessions", json={"integration_type": "cli"}).json()["session_id"] for _ in range(3)]
        page = c.get("/api/v1/sessions?limit=2").json()
        assert len(page["items"]) == 2 and page["next_offset"] == 2
        rest = c.get("/api/v1/sessions?limit=2&offset=2").json()
        assert {s["session_id"] for s in page["items"] + rest["items"]} == set(made)
        ended = c.post(f"/api/v1/sessions/{made[0]}/end").json()
        assert ended["status"] == "inactive"
        refused = c.post("/api/v1/requests/cli", json={"content": "hi", "session_id": made[0]})
        assert refused.status_code == 409


def test_cancel_reaches_a_model_that_sends_nothing(stack: Stack) -> None:
    with stack.client() as c:
        # 1,000 s before the first token: a cancel the model only noticed at its next token would outlast the test.
        r = c.post(
            "/api/v1/requests/web", json={"content": "slow thinker", "new_session": True, "metadata": offline(5, 0.001)}
        ).json()
        wait_status(c, r["request_id"], {"running"})
        assert c.post(f"/api/v1/requests/{r['request_id']}/cancel").status_code == 202
        events = read_until(c, r["stream_url"], done_for(r["request_id"]))
        assert [e.event for e in events][-2:] == ["run.cancelled", "done"]
        assert "token" not in [e.event for e in events]
