"""The periodic sweeps: requests past their deadline fail with a terminal event; idle sessions expire."""

from __future__ import annotations

from tests.conftest import Stack, wait_until
from tests.support.streams import done_for, read_until, wait_status


def test_overdue_request_fails_and_idle_session_expires(stack: Stack, new_stack: Stack) -> None:
    # A gateway with short deadlines; the shared stack's workers run the sweeps on the same database.
    new_stack.start_gateway(REQUEST_TIMEOUT_SECONDS="2", SESSION_TTL_SECONDS="3")
    with new_stack.client() as c:
        r = c.post(
            "/api/v1/requests/web", json={"content": "nobody will answer", "agent_id": "orphan", "new_session": True}
        ).json()
        events = read_until(c, r["stream_url"], done_for(r["request_id"]), timeout=30)
        assert [e.event for e in events][-2:] == ["run.failed", "done"]
        assert events[-2].json()["data"]["error"] == "timed out"
        stored = wait_status(c, r["request_id"], {"failed"})
        assert stored["status"] == "failed" and stored["error"] == "timed out"
        wait_until(
            lambda: c.get(f"/api/v1/sessions/{r['session_id']}").json()["status"] == "expired",
            30,
            "the idle session to expire",
        )
        refused = c.post("/api/v1/requests/web", json={"content": "still there?", "session_id": r["session_id"]})
        assert refused.status_code == 409
