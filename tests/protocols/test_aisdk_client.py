"""The real AI SDK client (`ai`, pinned in tests/js/package-lock.json) against relaygate's `/api/chat`.

Node runs tests/js/chat.mjs: `AbstractChat` (the state machine `useChat` runs) over `DefaultChatTransport`,
or the transport alone. The first run installs the pinned packages with `npm ci`.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.aisdk.chunks import RESUME_PREFIX, UiMessageStream
from common.streams.hub import Entry
from tests.conftest import ROOT, Stack, wait_until
from tests.fakes.openai_api import FakeOpenAI
from tests.support.streams import offline, wait_status
from workers.offline_model import compose_reply

JS = ROOT / "tests" / "js"
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the pinned packages installed (`npm ci` when node_modules is missing)."""
    binary, npm = shutil.which("node"), shutil.which("npm")
    if not binary or not npm:
        pytest.skip("node and npm are needed for the AI SDK client tests")
    if not (JS / "node_modules" / "ai").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, timeout=600, capture_output=True)
    return binary


class Chat:
    """One user's chat, driven through the Node client."""

    def __init__(self, stack: Stack, node: str, user: str | None = None) -> None:
        self.stack, self.node = stack, node
        self.user = user or f"aisdk-{uuid.uuid4().hex[:8]}"
        self.token = stack.mint(self.user, "tenant-aisdk")
        self.chat_id = f"chat-{uuid.uuid4().hex[:10]}"

    def env(self, text: str = "Hello", **body: Any) -> dict[str, str]:
        return {
            **os.environ,
            "BASE": self.stack.base_url,
            "TOKEN": self.token,
            "CHAT_ID": self.chat_id,
            "TEXT": text,
            "BODY": json.dumps(body),
        }

    def run(self, mode: str, text: str = "Hello", stdin: bytes | None = None, **body: Any) -> dict[str, Any]:
        done = subprocess.run(
            [self.node, "chat.mjs", mode],
            cwd=JS,
            env=self.env(text, **body),
            input=stdin,
            capture_output=True,
            timeout=120,
        )
        return result_of(done.stdout.decode(), done.stderr.decode())

    def start(self, mode: str, text: str = "Hello", **body: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [self.node, "chat.mjs", mode],
            cwd=JS,
            env=self.env(text, **body),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.stack.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)


def result_of(stdout: str, stderr: str = "") -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("result ")]
    assert lines, f"no result from node:\n{stdout[-2000:]}\n{stderr[-2000:]}"
    parsed: dict[str, Any] = json.loads(lines[-1].removeprefix("result "))
    return parsed


def wait_for_text(process: subprocess.Popen[str]) -> list[str]:
    """Lines the process printed until it reported some streamed text."""
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("text ") and int(line.split()[1]) > 0:
            return lines
    raise AssertionError(f"the client saw no text: {lines} {process.stderr.read() if process.stderr else ''}")


def grows(texts: list[str]) -> bool:
    """Each state of the reply extends the one before: nothing shown twice, nothing taken back."""
    return all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))


def assistant(result: dict[str, Any]) -> dict[str, Any]:
    [reply] = [m for m in result["messages"] if m["role"] == "assistant"]
    return reply


def test_use_chat_sends_a_message_and_streams_the_reply(stack: Stack, node: str) -> None:
    chat = Chat(stack, node)
    first = chat.run("send", "Hello AI SDK", metadata=offline(30, 300))
    assert first["status"] == "ready" and first["error"] is None, first
    assert first["finish"]["finishReason"] == "stop" and not first["finish"]["isError"]
    reply = assistant(first)
    expected = "".join(compose_reply("Hello AI SDK", 30))
    assert reply["text"] == expected and grows(first["texts"])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    request_id, session_id = reply["metadata"]["request_id"], reply["metadata"]["session_id"]
    assert reply["id"] == request_id
    second = chat.run("send", "And again", metadata=offline(5, 300))
    assert assistant(second)["metadata"]["session_id"] == session_id, "one session per chat id"
    with chat.http() as c:
        assert wait_status(c, request_id, {"completed"})["response"] == expected
        turns = c.get(f"/api/v1/sessions/{session_id}/requests").json()["items"]
        assert [t["content"] for t in turns] == ["Hello AI SDK", "And again"]


def test_a_second_process_resumes_the_reply_in_progress(stack: Stack, node: str) -> None:
    chat = Chat(stack, node)
    sender = chat.start("send", "Resume me", metadata=offline(120, 16))
    try:
        wait_for_text(sender)
        in_progress = _active_request(chat)
        reconnecting = chat.start("reconnect")
        resumed = chat.run("resume")
        by_transport = result_of(*reconnecting.communicate(timeout=60))
        out, err = sender.communicate(timeout=60)
    finally:
        sender.kill()
    expected = "".join(compose_reply("Resume me", 120))
    original = result_of(out, err)
    assert assistant(original)["text"] == expected
    assert resumed["status"] == "ready" and resumed["finish"]["finishReason"] == "stop", resumed
    assert assistant(resumed)["text"] == expected and grows(resumed["texts"]), resumed["texts"]
    assert assistant(resumed)["id"] == assistant(original)["id"], "the replay keeps the message id"
    assert assistant(resumed)["id"] == in_progress, "the reply was still in progress when the resume began"
    assert by_transport["none"] is False and by_transport["text"] == expected and grows(by_transport["texts"])
    assert chat.run("reconnect") == {"none": True}, "nothing in progress any more: 204"


def test_resume_of_an_idle_or_unused_chat_answers_204(stack: Stack, node: str) -> None:
    chat = Chat(stack, node)
    assert chat.run("reconnect") == {"none": True}
    idle = chat.run("resume")
    assert idle["status"] == "ready" and idle["messages"] == []
    with chat.http() as c:
        assert c.get(f"/api/chat/{chat.chat_id}/stream").status_code == 204
        assert c.post(f"/api/chat/{chat.chat_id}/stop").status_code == 204


def test_stop_ends_the_stream_cleanly_and_resume_then_answers_204(stack: Stack, node: str) -> None:
    chat = Chat(stack, node)
    stopped = chat.run("send-stop", "Stop me", metadata=offline(400, 20))
    assert stopped["stopStatus"] == 202
    assert stopped["status"] == "ready" and stopped["error"] is None, stopped
    assert stopped["finish"]["finishReason"] == "other" and not stopped["finish"]["isError"]
    text = assistant(stopped)["text"]
    assert text and "".join(compose_reply("Stop me", 400)).startswith(text) and len(text) < 1000
    assert stopped["afterResume"] == "ready"
    with chat.http() as c:
        assert wait_status(c, assistant(stopped)["metadata"]["request_id"], {"cancelled"})["status"] == "cancelled"


@pytest.fixture(scope="module")
def failing_provider(stack: Stack) -> Iterator[FakeOpenAI]:
    """A worker for the `provider` agent whose fake provider refuses every call with a 401."""
    with FakeOpenAI() as fake:
        worker = stack.start_worker(
            "provider",
            LLM_MODEL="openai/fake-model",
            LLM_API_BASE=fake.base_url,
            LLM_API_KEY="sk-test-" + uuid.uuid4().hex,
            LLM_RETRIES="1",
            LEASE_SECONDS="30",
        )
        try:
            yield fake
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(15)


def test_a_failed_reply_is_an_error_chunk(stack: Stack, node: str, failing_provider: FakeOpenAI) -> None:
    failing_provider.fail(401, message="Incorrect API key provided", type="invalid_request_error")
    failed = Chat(stack, node).run("send", "fail please", agent_id="provider")
    assert failed["status"] == "error" and failed["finish"]["isError"], failed
    assert "Incorrect API key provided" in failed["error"] and "sk-test" not in failed["error"]
    assert all(m["text"] == "" for m in failed["messages"] if m["role"] == "assistant")


def _entry(n: int, kind: str, attempt: int, data: dict[str, Any]) -> Entry:
    body = {"type": kind, "request_id": "r1", "attempt": attempt, "seq": n, "ts": 0, "data": data}
    return Entry(
        id=(n, 0),
        raw_id=f"{n}-0".encode(),
        type=kind.encode(),
        request_id=b"r1",
        attempt=attempt,
        json=json.dumps(body).encode(),
    )


RETRIED_REPLY = [
    _entry(1, "request.accepted", 1, {}),
    _entry(2, "run.started", 1, {}),
    _entry(3, "token", 1, {"text": "First attempt "}),
    _entry(4, "token", 1, {"text": "cut"}),
    _entry(5, "run.retrying", 2, {"attempt": 2}),
    _entry(6, "run.started", 2, {}),
    _entry(7, "token", 2, {"text": "Second "}),
    _entry(8, "token", 2, {"text": "attempt."}),
    _entry(9, "message", 2, {"content": "Second attempt."}),
    _entry(10, "run.completed", 2, {}),
    _entry(11, "done", 2, {"status": "completed"}),
]


def _sse(renderer: UiMessageStream) -> bytes:
    out = renderer.opening()
    for entry in RETRIED_REPLY:
        out += renderer.render(entry)
        if renderer.ended:
            break
    return out


def test_the_client_never_shows_two_attempts_concatenated(stack: Stack, node: str) -> None:
    chat = Chat(stack, node)
    live = chat.run("parse", stdin=_sse(UiMessageStream("r1", "s1")))
    assert live["text"] == "First attempt cut" and grows(live["texts"])
    assert len(live["errors"]) == 1 and live["errors"][0].startswith(RESUME_PREFIX)
    replay = chat.run("parse", stdin=_sse(UiMessageStream("r1", "s1", superseded_below=2)))
    assert replay["text"] == "Second attempt." and replay["errors"] == [] and grows(replay["texts"])
    unseen = UiMessageStream("r1", "s1")
    fresh = chat.run(
        "parse", stdin=unseen.opening() + b"".join(unseen.render(e) for e in RETRIED_REPLY[:2] + RETRIED_REPLY[4:])
    )
    assert fresh["text"] == "Second attempt." and fresh["errors"] == [], "no text shown yet: nothing to retract"


def test_tool_steps_are_tool_parts_for_the_client(stack: Stack, node: str) -> None:
    steps = [
        _entry(1, "run.started", 1, {}),
        _entry(2, "token", 1, {"text": "Let me look. "}),
        _entry(3, "tool.call", 1, {"id": "call-1", "name": "search", "arguments": {"q": "relaygate"}}),
        _entry(4, "tool.result", 1, {"id": "call-1", "result": {"hits": 3}}),
        _entry(5, "token", 1, {"text": "Found 3."}),
        _entry(6, "run.completed", 1, {}),
        _entry(7, "done", 1, {"status": "completed"}),
    ]
    renderer = UiMessageStream("r1", "s1")
    body = renderer.opening() + b"".join(renderer.render(e) for e in steps)
    parsed = Chat(stack, node).run("parse", stdin=body)
    assert parsed["errors"] == [] and parsed["text"] == "Let me look. Found 3."
    assert parsed["parts"] == ["step-start", "text", "dynamic-tool", "text"]
    assert parsed["tool"] == {
        "toolName": "search",
        "toolCallId": "call-1",
        "state": "output-available",
        "input": {"q": "relaygate"},
        "output": {"hits": 3},
    }


def test_a_killed_worker_never_concatenates_attempts(stack: Stack, node: str, chaos_workers: Any) -> None:
    chaos_workers()
    chat = Chat(stack, node)
    sender = chat.start("send", "survive this", agent_id="chaos", metadata=offline(150, 30))
    try:
        wait_for_text(sender)
        request_id = _active_request(chat)
        os.kill(stack.worker_running(request_id), signal.SIGKILL)
        out, err = sender.communicate(timeout=90)
    finally:
        sender.kill()
    live = result_of(out, err)
    assert live["status"] == "error" and live["error"].startswith(RESUME_PREFIX), live
    assert grows(live["texts"])
    with chat.http() as c:
        wait_until(lambda: c.get(f"/api/v1/requests/{request_id}").json()["attempt"] == 2, 30, "the retry")
    resumed = chat.run("resume")
    expected = "".join(compose_reply("survive this", 150))
    assert assistant(resumed)["text"] == expected and grows(resumed["texts"]), resumed["texts"]
    with chat.http() as c:
        stored = wait_status(c, request_id, {"completed"}, timeout=60)
    assert stored["attempt"] == 2 and stored["response"] == expected


def _active_request(chat: Chat) -> str:
    """The id of the chat's reply in progress, as the resume stream's `start` chunk names it."""
    with chat.http() as c, c.stream("GET", f"/api/chat/{chat.chat_id}/stream") as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                start = json.loads(line.removeprefix("data: "))
                assert start["type"] == "start"
                return str(start["messageId"])
    raise AssertionError("no start chunk")
