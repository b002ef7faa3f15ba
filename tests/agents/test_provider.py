"""A worker talking to a model provider, end to end, through each of its clients.

The provider is a fake OpenAI-compatible server on a loopback port (tests/fakes/openai_api.py),
so the lean client's (or litellm's real OpenAI client's) streaming parser, error mapping and the
worker's retries all run: replies stream through to SSE clients, history reaches the provider, transient
errors are retried and permanent ones end the request with a readable error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Stack
from tests.fakes.openai_api import FakeOpenAI
from tests.support.streams import done_for, read_until, text_of, wait_status

MODEL = "openai/fake-model"
API_KEY = "sk-test-" + uuid.uuid4().hex
SYSTEM_PROMPT = "You are tested against a fake provider."  # the `provider` agent in tests/agents.yaml


@pytest.fixture(scope="module", params=["auto", "off"])
def provider(request: pytest.FixtureRequest, stack: Stack, fake: FakeOpenAI) -> Iterator[Stack]:
    """One worker on the `provider` feature per client: the lean OpenAI-compatible one (LLM_FAST_PATH=auto)
    and litellm's (off), each for the whole module.

    Its lease is long: this module tests the provider path, not lease recovery, and litellm's
    first call imports the OpenAI SDK inside the event loop, which can stall the heartbeat
    for seconds on a busy machine and make the reaper start a second attempt.
    """
    with stack.serving(
        "provider",
        LLM_MODEL=MODEL,
        LLM_API_BASE=fake.base_url,
        LLM_API_KEY=API_KEY,
        LLM_RETRIES="3",
        LEASE_SECONDS="30",
        LLM_FAST_PATH=str(request.param),
    ) as served:
        yield served


def ask(c: httpx.Client, content: str, session_id: str | None = None) -> tuple[dict[str, Any], list[Any]]:
    """Send `content` to the `provider` agent and read the session stream until the request is done."""
    body: dict[str, Any] = {"content": content, "agent_id": "provider"}
    body.update({"session_id": session_id} if session_id else {"new_session": True})
    r = c.post("/api/v1/requests/web", json=body)
    assert r.status_code == 202, r.text
    accepted = r.json()
    events = read_until(c, accepted["stream_url"], done_for(accepted["request_id"]))
    assert events[-1].event == "done", [e.event for e in events]
    return accepted, events


def of_type(events: list[Any], type_: str, request_id: str) -> list[dict[str, Any]]:
    return [e.json()["data"] for e in events if e.event == type_ and e.json()["request_id"] == request_id]


def test_reply_streams_through_litellm(provider: Stack, fake: FakeOpenAI) -> None:
    reply = "Streaming works: this reply came from the fake provider, chunk by chunk."
    content = f"hello provider {uuid.uuid4().hex[:6]}"
    fake.reply(reply)
    with provider.client() as c:
        accepted, events = ask(c, content)
        rid = accepted["request_id"]
        assert text_of(events, rid) == reply
        assert [s["model"] for s in of_type(events, "run.started", rid)] == [MODEL]
        assert of_type(events, "message", rid)[-1]["content"] == reply
        assert of_type(events, "done", rid)[-1]["status"] == "completed"
        stored = wait_status(c, rid, {"completed"})
        assert (stored["status"], stored["response"], stored["agent_id"]) == ("completed", reply, "provider")

    [call] = fake.calls_with(content)
    assert call.path == "/v1/chat/completions"
    assert call.headers["authorization"] == f"Bearer {API_KEY}"
    assert call.body["stream"] is True
    assert call.body["model"] == "fake-model"
    assert call.messages == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def test_history_reaches_the_provider(provider: Stack, fake: FakeOpenAI) -> None:
    first, second = f"my name is Ada {uuid.uuid4().hex[:6]}", "what is my name?"
    fake.reply("Nice to meet you, Ada.", "Your name is Ada.")
    with provider.client() as c:
        accepted, _ = ask(c, first)
        then, events = ask(c, second, accepted["session_id"])
        assert then["session_id"] == accepted["session_id"]
        assert text_of(events, then["request_id"]) == "Your name is Ada."

    call = next(c for c in fake.calls_with(second) if any(m["content"] == first for m in c.messages))
    assert call.messages == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": second},
    ]


def test_transient_errors_are_retried(provider: Stack, fake: FakeOpenAI) -> None:
    content = f"retry me {uuid.uuid4().hex[:6]}"
    fake.fail(503, times=2)
    fake.reply("Third time lucky.")
    with provider.client() as c:
        accepted, events = ask(c, content)
        rid = accepted["request_id"]
        assert text_of(events, rid) == "Third time lucky."
        assert not of_type(events, "run.failed", rid)
        assert wait_status(c, rid, {"completed"})["status"] == "completed"
    assert len(fake.calls_with(content)) == 3


def test_permanent_error_fails_the_request_readably(provider: Stack, fake: FakeOpenAI) -> None:
    content = f"bad key {uuid.uuid4().hex[:6]}"
    fake.fail(401, message="Incorrect API key provided", type="invalid_request_error")
    with provider.client() as c:
        accepted, events = ask(c, content)
        rid = accepted["request_id"]
        types = [e.event for e in events if e.json().get("request_id") == rid]
        assert types[-2:] == ["run.failed", "done"], types
        assert "token" not in types and "message" not in types
        error = of_type(events, "run.failed", rid)[0]["error"]
        assert "Incorrect API key provided" in error and "Traceback" not in error
        assert of_type(events, "done", rid)[0]["status"] == "failed"
        stored = wait_status(c, rid, {"failed"})
        assert stored["status"] == "failed" and stored["error"] == error
    assert API_KEY not in error and API_KEY[8:] not in error
    assert len(fake.calls_with(content)) == 1, "a permanent error must not be retried"


def test_llm_retries_bounds_the_calls(provider: Stack, fake: FakeOpenAI) -> None:
    content = f"always down {uuid.uuid4().hex[:6]}"
    fake.fail(503, times=3)
    with provider.client() as c:
        accepted, events = ask(c, content)
        assert of_type(events, "run.failed", accepted["request_id"])
    assert len(fake.calls_with(content)) == 3
