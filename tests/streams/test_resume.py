"""Resuming a session stream: exactly the missing events, or a `stream.reset` from Postgres."""

from __future__ import annotations

import redis

from common.platform.keys import stream_key
from tests.conftest import Stack
from tests.support.streams import done_for, offline, read_until, text_of, wait_status
from workers.offline_model import compose_reply


def _session_with_reply(stack: Stack, c, tokens: int = 80):  # type: ignore[no-untyped-def]
    r = c.post(
        "/api/v1/requests/web", json={"content": "resume me", "new_session": True, "metadata": offline(tokens, 200)}
    ).json()
    return r, read_until(c, r["stream_url"], done_for(r["request_id"]))


def test_last_event_id_gives_exactly_the_missing_events(stack: Stack) -> None:
    with stack.client() as c:
        r, full = _session_with_reply(stack, c)
        for cut in (1, len(full) // 2, len(full) - 2):
            resumed = read_until(c, r["stream_url"], done_for(r["request_id"]), last_event_id=full[cut - 1].id)
            assert [e.id for e in resumed] == [e.id for e in full[cut:]]
        by_query = read_until(c, r["stream_url"], done_for(r["request_id"]), params={"from": full[3].id})
        assert [e.id for e in by_query] == [e.id for e in full[4:]]


def test_resume_while_live_has_no_gap_or_duplicate(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post(
            "/api/v1/requests/web", json={"content": "live resume", "new_session": True, "metadata": offline(300, 150)}
        ).json()
        first = read_until(c, r["stream_url"], lambda e: e.event == "token" and e.json()["seq"] >= 5)
        rest = read_until(c, r["stream_url"], done_for(r["request_id"]), last_event_id=first[-1].id)
        ids = [e.id for e in first + rest]
        assert len(ids) == len(set(ids))
        assert text_of(first + rest, r["request_id"]) == "".join(compose_reply("live resume", 300))


def test_ids_compare_as_numbers_not_text(stack: Stack) -> None:
    with stack.client() as c:
        r, full = _session_with_reply(stack, c, tokens=10)
        ms, _ = full[0].id.split("-")
        # "<ms>-10" sorts before "<ms>-9" as text; as numbers it is after every entry of that millisecond.
        resumed = read_until(c, r["stream_url"], done_for(r["request_id"]), last_event_id=f"{int(ms) - 1}-999999")
        assert [e.id for e in resumed] == [e.id for e in full]
        bad = c.get(r["stream_url"], headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 422


def test_trimmed_stream_sends_reset_with_the_reply_from_postgres(stack: Stack) -> None:
    with stack.client() as c:
        r, full = _session_with_reply(stack, c, tokens=40)
        wait_status(c, r["request_id"], {"completed"})
        key = stream_key(r["session_id"], 256)
        store = redis.Redis.from_url(stack.infra.redis_url)
        store.xtrim(key, maxlen=2, approximate=False)
        events = read_until(
            c, r["stream_url"], lambda e: e.event == "stream.reset", last_event_id=full[1].id, timeout=10
        )
        reset = events[0]
        assert reset.event == "stream.reset"
        body = reset.json()["data"]
        assert body["reason"] == "trimmed"
        [request] = body["requests"]
        assert request["response"] == "".join(compose_reply("resume me", 40))
        assert request["status"] == "completed"


def test_expired_stream_sends_reset(stack: Stack) -> None:
    with stack.client() as c:
        r, full = _session_with_reply(stack, c, tokens=10)
        wait_status(c, r["request_id"], {"completed"})
        redis.Redis.from_url(stack.infra.redis_url).delete(stream_key(r["session_id"], 256))
        events = read_until(
            c, r["stream_url"], lambda e: e.event == "stream.reset", last_event_id=full[-1].id, timeout=10
        )
        assert events[0].json()["data"]["reason"] == "expired"
        # A new request in the same session streams normally after the reset.
        nxt = c.post("/api/v1/requests/web", json={"content": "again", "session_id": r["session_id"]}).json()
        more = read_until(c, r["stream_url"], done_for(nxt["request_id"]), last_event_id=events[0].id)
        assert text_of(more, nxt["request_id"]) == "".join(compose_reply("again", 30))


def test_live_only_stream_skips_history(stack: Stack) -> None:
    with stack.client() as c:
        r, _ = _session_with_reply(stack, c, tokens=10)
        nxt = c.post(
            "/api/v1/requests/web", json={"content": "fresh", "session_id": r["session_id"], "metadata": offline(10, 5)}
        ).json()
        live = read_until(c, r["stream_url"], done_for(nxt["request_id"]), params={"from": "$"})
        assert {e.json()["request_id"] for e in live} == {nxt["request_id"]}


def test_full_replay_of_a_trimmed_stream_starts_with_a_reset(stack: Stack) -> None:
    with stack.client() as c:
        r, _ = _session_with_reply(stack, c, tokens=40)
        wait_status(c, r["request_id"], {"completed"})
        redis.Redis.from_url(stack.infra.redis_url).xtrim(stream_key(r["session_id"], 256), maxlen=1, approximate=False)
        events = read_until(c, r["stream_url"], lambda e: e.event == "done", timeout=10)
        assert events[0].event == "stream.reset"
        assert events[0].json()["data"]["requests"][0]["response"] == "".join(compose_reply("resume me", 40))
        assert [e.event for e in events[1:]] == ["done"]
