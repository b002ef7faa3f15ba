"""At-least-once with fast recovery: a worker killed mid-reply is replaced within seconds, and what the lost
attempt streamed still counts in the request's usage (estimated)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from tests.conftest import Stack, sql, wait_until
from tests.support.streams import done_for, offline, read_until, text_of, wait_status
from workers.offline_model import compose_reply


def test_kill_9_mid_reply_finishes_on_another_worker(stack: Stack, chaos_workers: Callable[[], None]) -> None:
    chaos_workers()
    c = stack.client()
    r = c.post(
        "/api/v1/requests/web",
        json={"content": "survive this", "agent_id": "chaos", "new_session": True, "metadata": offline(150, 30)},
    ).json()
    # Let some tokens out (and a heartbeat store them as used), then kill the worker producing them without warning.
    seen = read_until(c, r["stream_url"], lambda e: e.event == "token" and e.json()["seq"] >= 4)

    def counted() -> int:
        rows = sql(
            stack, "SELECT attempt_output_tokens AS n FROM request_logs WHERE request_id = $1::uuid", r["request_id"]
        )
        return int(rows[0]["n"])

    wait_until(lambda: counted() > 0, 10, "a heartbeat to store the attempt's usage so far")
    lost_at_least = counted()
    os.kill(stack.worker_running(r["request_id"]), signal.SIGKILL)
    rest = read_until(c, r["stream_url"], done_for(r["request_id"]), last_event_id=seen[-1].id, timeout=60)
    events = seen + rest
    retrying = [e for e in events if e.event == "run.retrying"]
    assert retrying and retrying[0].json()["attempt"] == 2
    assert rest[-1].json()["attempt"] == 2 and rest[-2].event == "run.completed"
    expected = "".join(compose_reply("survive this", 150))
    assert text_of(events, r["request_id"]) == expected
    stored = wait_status(c, r["request_id"], {"completed"})
    assert stored["response"] == expected and stored["attempt"] == 2
    used = stored["usage"]
    assert used["output_tokens"] >= 150 + lost_at_least and used["estimated"] is True, used
    assert used["input_tokens"] == 2 * len("survive this".split()), used
    rolled = sql(
        stack,
        "SELECT u.model, sum(u.output_tokens) AS output_tokens, r.response_metadata ->> 'model' AS used"
        " FROM usage_daily u JOIN request_logs r ON r.tenant_id = u.tenant_id AND r.user_id = u.user_id"
        " WHERE r.request_id = $1::uuid GROUP BY u.model, used",
        r["request_id"],
    )
    assert [(x["model"], x["output_tokens"]) for x in rolled] == [(rolled[0]["used"], used["output_tokens"])]


def test_lost_attempt_cannot_overwrite_the_result(stack: Stack, chaos_workers: Callable[[], None]) -> None:
    """A worker frozen past its lease (SIGSTOP) wakes after the retry finished and must change nothing."""
    chaos_workers()
    c = stack.client()
    r = c.post(
        "/api/v1/requests/web",
        json={"content": "frozen", "agent_id": "chaos", "new_session": True, "metadata": offline(60, 20)},
    ).json()
    read_until(c, r["stream_url"], lambda e: e.event == "token")
    frozen = next(w for w in stack.workers if w.pid == stack.worker_running(r["request_id"]))
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        stored = wait_status(c, r["request_id"], {"completed"}, timeout=40)
        assert stored["status"] == "completed" and stored["attempt"] == 2
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    wait_until(
        lambda: f"{r['request_id']}:process_request ● 'fenced'" in stack.worker_log(frozen),
        15,
        "the woken worker to give its attempt up",
    )
    after = wait_status(c, r["request_id"], {"completed"})
    assert after["attempt"] == 2 and after["response"] == "".join(compose_reply("frozen", 60))
    events = read_until(c, r["stream_url"], done_for(r["request_id"]))
    done = [e for e in events if e.event == "done"]
    assert [d.json()["attempt"] for d in done] == [2]
    wait_until(lambda: frozen.poll() is None, 1, "frozen worker still alive")
