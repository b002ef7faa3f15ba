"""The real `openai` Python SDK against relaygate's `/v1` (gateway and workers as processes on loopback).

Agents are the models; each call is a turn of a session (`X-Session-Id`, `X-Chat-Id`, else a new one);
errors raise the SDK's own exception types; the conversation the client sends is what the model sees
(checked at a fake provider behind a real worker).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ROOT, Stack
from tests.fakes.openai_api import FakeOpenAI
from tests.support.streams import offline, wait_status
from workers.offline_model import compose_reply

pytestmark = pytest.mark.timeout(180)


def sdk(stack: Stack, token: str | None = None, base_url: str | None = None, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base_url or stack.base_url}/v1",
        max_retries=0,
        timeout=60,
        api_key=token or stack.mint(f"sdk-{uuid.uuid4().hex[:8]}", "tenant-sdk"),
        default_headers=headers or None,
    )


def request_id(completion_id: str) -> str:
    assert completion_id.startswith("chatcmpl-")
    return completion_id.removeprefix("chatcmpl-")


def streamed_text(chunks: Any) -> tuple[str, list[Any]]:
    seen = list(chunks)
    return "".join(c.choices[0].delta.content or "" for c in seen if c.choices), seen


@pytest.fixture(scope="module")
def provider(stack: Stack, fake: FakeOpenAI) -> Iterator[Stack]:
    """A worker for the `provider` agent, talking to the fake provider (see tests/agents/test_provider.py)."""
    with stack.serving(
        "provider",
        LLM_MODEL="openai/fake-model",
        LLM_API_BASE=fake.base_url,
        LLM_API_KEY="sk-test-" + uuid.uuid4().hex,
        LLM_RETRIES="1",
        LEASE_SECONDS="30",
    ) as served:
        yield served


def test_models_are_the_agents(stack: Stack) -> None:
    env = {**os.environ, "DATABASE_URL": stack.infra.database_url}
    api_key = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "apikey",
            "create",
            "--tenant",
            "tenant-sdk",
            "--user",
            f"sdk-{uuid.uuid4().hex[:8]}",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    client = sdk(stack, api_key)  # an API key, as Open WebUI and LibreChat send it: Authorization: Bearer
    ids = [m.id for m in client.models.list()]
    assert {"assistant", "it-support", "chaos"} <= set(ids)
    assert client.models.retrieve("assistant").owned_by == "relaygate"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-agent")
    assert missing.value.code == "model_not_found"


def test_a_completion_is_a_stored_turn(stack: Stack) -> None:
    client = sdk(stack)
    raw = client.chat.completions.with_raw_response.create(
        model="assistant", messages=[{"role": "user", "content": "Hello SDK"}], extra_body={"metadata": offline(25, 0)}
    )
    completion = raw.parse()
    expected = "".join(compose_reply("Hello SDK", 25))
    assert completion.object == "chat.completion" and completion.model == "assistant"
    assert completion.choices[0].message.content == expected and completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 25
    session_id = raw.headers["x-session-id"]
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {client.api_key}"}) as c:
        stored = wait_status(c, request_id(completion.id), {"completed"})
        assert stored["response"] == expected and stored["session_id"] == session_id
        assert stored["agent_id"] == "assistant"


def test_a_streamed_completion_with_usage(stack: Stack) -> None:
    client = sdk(stack)
    stream = client.chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Stream me"}]}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"metadata": offline(30, 300)},
    )
    text, chunks = streamed_text(stream)
    assert text == "".join(compose_reply("Stream me", 30))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    used = chunks[-1].usage
    assert used.completion_tokens == 30 and used.prompt_tokens > 0  # the request's own count (docs/USAGE.md)
    assert used.total_tokens == used.prompt_tokens + used.completion_tokens


def test_session_and_chat_headers_choose_the_session(stack: Stack) -> None:
    token = stack.mint(f"sdk-{uuid.uuid4().hex[:8]}", "tenant-sdk")
    ask: dict[str, Any] = {
        "model": "assistant",
        "messages": [{"role": "user", "content": "hi"}],
        "extra_body": {"metadata": offline(3, 0)},
    }
    fresh = [
        sdk(stack, token).chat.completions.with_raw_response.create(**ask).headers["x-session-id"] for _ in range(2)
    ]
    assert fresh[0] != fresh[1], "without a header every call starts a session"
    again = sdk(stack, token, **{"X-Session-Id": fresh[0]}).chat.completions.with_raw_response.create(**ask)
    assert again.headers["x-session-id"] == fresh[0]
    chat = f"owui-{uuid.uuid4().hex[:8]}"
    named = [
        sdk(stack, token, **{"X-Chat-Id": chat})
        .chat.completions.with_raw_response.create(**ask)
        .headers["x-session-id"]
        for _ in range(2)
    ]
    assert named[0] == named[1] and named[0] not in fresh
    someone_else = sdk(stack, None, **{"X-Chat-Id": chat}).chat.completions.with_raw_response.create(**ask)
    assert someone_else.headers["x-session-id"] != named[0], "a chat id is per user"
    with pytest.raises(openai.NotFoundError):
        sdk(stack, None, **{"X-Session-Id": fresh[0]}).chat.completions.create(**ask)
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}) as c:
        turns = c.get(f"/api/v1/sessions/{named[0]}/requests").json()["items"]
        assert [t["content"] for t in turns] == ["hi", "hi"]


def test_errors_raise_the_sdk_exception_types(stack: Stack) -> None:
    client = sdk(stack)
    hello = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        sdk(stack, "not-a-token").models.list()
    assert unauthorized.value.status_code == 401
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-nope", messages=hello)  # type: ignore[arg-type]
    assert unknown.value.code == "model_not_found" and unknown.value.type == "invalid_request_error"
    invalid: list[dict[str, Any]] = [
        {"messages": []},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "prefill"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {"messages": hello, "n": 2},
        {"messages": hello, "max_tokens": 1_000_000},
    ]
    for case in invalid:
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="assistant", **case)
        assert bad.value.status_code == 400 and bad.value.type == "invalid_request_error", case
        assert isinstance(bad.value.body, dict) and bad.value.body["message"], case


def test_over_the_rate_limit_is_a_rate_limit_error(stack: Stack, tmp_path: Any) -> None:
    limited = Stack(stack.infra, tmp_path, {**stack.env, "RATE_LIMIT_USER_PER_MINUTE": "1"})
    try:
        limited.start_gateway()
        client = sdk(stack, base_url=limited.base_url)
        ask: dict[str, Any] = {
            "model": "assistant",
            "messages": [{"role": "user", "content": "hi"}],
            "extra_body": {"metadata": offline(2, 0)},
        }
        client.chat.completions.create(**ask)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(**ask)
        assert refused.value.code == "rate_limit_exceeded"
        assert int(refused.value.response.headers["retry-after"]) >= 1
    finally:
        limited.stop()


def test_the_model_sees_the_messages_given(provider: Stack, fake: FakeOpenAI) -> None:
    question = f"what is my name? {uuid.uuid4().hex[:6]}"
    fake.reply("Your name is Ada.")
    messages: list[Any] = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": question},
    ]
    completion = sdk(provider).chat.completions.create(model="provider", messages=messages, max_completion_tokens=7)
    assert completion.choices[0].message.content == "Your name is Ada."
    [call] = fake.calls_with(question)
    assert call.messages == [
        {"role": "system", "content": "You are tested against a fake provider."},
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": question},
    ]
    assert call.body["max_tokens"] == 7


def test_a_failed_reply_raises_streamed_or_not(provider: Stack, fake: FakeOpenAI) -> None:
    client = sdk(provider)
    fake.fail(401, message="Incorrect API key provided", type="invalid_request_error")
    with pytest.raises(openai.APIError) as streamed:
        streamed_text(
            client.chat.completions.create(
                model="provider", messages=[{"role": "user", "content": "fail streamed"}], stream=True
            )
        )
    assert "Incorrect API key provided" in streamed.value.message
    assert isinstance(streamed.value.body, dict) and streamed.value.body["code"] == "run_failed"
    fake.fail(401, message="Incorrect API key provided", type="invalid_request_error")
    with pytest.raises(openai.InternalServerError) as whole:
        client.chat.completions.create(model="provider", messages=[{"role": "user", "content": "fail whole"}])
    assert whole.value.status_code == 502 and "Incorrect API key provided" in whole.value.message
    assert whole.value.response.headers["x-should-retry"] == "false"


def test_closing_the_stream_cancels_the_reply(stack: Stack) -> None:
    client = sdk(stack)
    stream = client.chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "long one"}],
        stream=True,
        extra_body={"metadata": offline(400, 20)},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {client.api_key}"}) as c:
        stored = wait_status(c, request_id(chunk.id), {"cancelled", "completed"})
    assert stored["status"] == "cancelled", stored
