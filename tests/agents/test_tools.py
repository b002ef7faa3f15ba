"""Agents with MCP tools, end to end: a gateway and workers as processes, a real MCP server built with the
`mcp` package (streamable HTTP on loopback, and the demo server over stdio) and the fake OpenAI-compatible
provider streaming `tool_calls` deltas through litellm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cli.dev.embedded import free_port
from cli.sse import SseEvent
from tests.conftest import ROOT, Infra, Stack, stack_env, wait_until
from tests.fakes.mcp_server import FakeMcp
from tests.fakes.openai_api import FakeOpenAI, ToolCalls
from tests.support.budgets import counted_today
from tests.support.streams import done_for, read_until, text_of, wait_status

MODEL = "openai/fake-model"
TOKEN = "mcp-token-" + uuid.uuid4().hex
TIMEOUT = 5
APPROVAL_SECONDS = 8  # every test that decides does so within a second or two of the ask

pytestmark = pytest.mark.e2e  # its own gateway and workers (`tools_stack`), not the `stack` fixture


@pytest.fixture(scope="module")
def mcp() -> Iterator[FakeMcp]:
    with FakeMcp() as server:
        yield server


def agents_file(folder: Path, mcp_url: str) -> Path:
    remote = {"name": "t", "url": mcp_url, "headers": {"X-Token": "${RG_TEST_MCP_TOKEN}"}}
    agents = [
        {"id": "assistant", "feature": "tools", "default": True},
        {
            "id": "demo",
            "feature": "tools",
            "tools": {"servers": [{"name": "demo", "command": ["python", "-m", "workers.mcp_demo"]}]},
        },
        {
            "id": "remote",
            "feature": "tools",
            "model": MODEL,
            "max_steps": 3,
            "tools": {"servers": [remote, {"name": "down", "url": f"http://127.0.0.1:{free_port()}/mcp"}]},
        },
        {"id": "guarded", "feature": "tools", "model": MODEL, "tools": {"servers": [remote], "approval": ["t.record"]}},
        {
            "id": "crashy",
            "feature": "tools-chaos",
            "model": MODEL,
            "tools": {"servers": [remote], "idempotent": ["t.hold"]},
        },
    ]
    path = folder / "agents.yaml"
    path.write_text(yaml.safe_dump({"agents": agents}))
    return path


@pytest.fixture(scope="module")
def tools_stack(
    infra: Infra, fake: FakeOpenAI, mcp: FakeMcp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("tools")
    env = stack_env(
        infra,
        AGENTS_FILE=str(agents_file(folder, mcp.url)),
        LLM_API_BASE=fake.base_url,
        LLM_API_KEY="sk-test-" + uuid.uuid4().hex,
        LLM_RETRIES="1",
        RG_TEST_MCP_TOKEN=TOKEN,
        TOOL_CALL_TIMEOUT_SECONDS=str(TIMEOUT),
        TOOL_RESULT_MAX_CHARS="1000",
        APPROVAL_TIMEOUT_SECONDS=str(APPROVAL_SECONDS),
    )
    s = Stack(infra, folder, env)
    try:
        s.start_gateway()
        s.start_worker("tools", LEASE_SECONDS="30")
        yield s
    finally:
        s.stop()


def start(c: httpx.Client, agent: str, content: str) -> dict[str, Any]:
    r = c.post("/api/v1/requests/web", json={"content": content, "agent_id": agent, "new_session": True})
    assert r.status_code == 202, r.text
    accepted: dict[str, Any] = r.json()
    return accepted


def ask(c: httpx.Client, agent: str, content: str) -> tuple[dict[str, Any], list[SseEvent]]:
    accepted = start(c, agent, content)
    events = read_until(c, accepted["stream_url"], done_for(accepted["request_id"]))
    return accepted, [e for e in events if e.json().get("request_id") == accepted["request_id"]]


def data(events: list[SseEvent], type_: str) -> list[dict[str, Any]]:
    return [e.json()["data"] for e in events if e.event == type_]


def test_offline_model_calls_the_demo_server_over_stdio(tools_stack: Stack) -> None:
    with tools_stack.client() as c:
        accepted, events = ask(c, "demo", '/tool demo.calculate {"expression": "6*7"}')
        rid = accepted["request_id"]
        [call] = data(events, "tool.call")
        assert (call["tool"], call["arguments"]) == ("demo.calculate", {"expression": "6*7"})
        [result] = data(events, "tool.result")
        assert (result["call_id"], result["tool"], result["ok"], result["output"]) == (
            call["call_id"],
            "demo.calculate",
            True,
            "42",
        )
        types = [e.event for e in events]
        assert types.index("tool.call") < types.index("tool.result") < types.index("run.completed")
        assert "demo.calculate returned: 42" in text_of(events, rid)
        stored = wait_status(c, rid, {"completed"})
        [step] = stored["steps"]
        assert (step["tool"], step["status"], step["output"], step["attempt"]) == ("demo.calculate", "ok", "42", 1)
        assert step["duration_ms"] is not None


def test_call_over_streamable_http_with_an_env_header(tools_stack: Stack, fake: FakeOpenAI, mcp: FakeMcp) -> None:
    content = f"which token {uuid.uuid4().hex[:6]}"
    fake.tools(ToolCalls([("t__header", {"name": "x-token"})], text="Let me look."))
    fake.reply("Your token is known.")
    with tools_stack.client() as c:
        accepted, events = ask(c, "remote", content)
        [result] = data(events, "tool.result")
        assert (result["tool"], result["ok"], result["output"]) == ("t.header", True, TOKEN)
        assert text_of(events, accepted["request_id"]) == "Let me look.Your token is known."
        assert wait_status(c, accepted["request_id"], {"completed"})["status"] == "completed"
    first, second = fake.calls_with(content)
    offered = sorted(t["function"]["name"] for t in first.body["tools"])
    assert "t__echo" in offered and "t__header" in offered and not any("." in n for n in offered)
    assert not any(n.startswith("down") for n in offered), "a server that is down offers no tools"
    assistant, tool = second.messages[-2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "t__header"
    assert (tool["role"], tool["content"], tool["tool_call_id"]) == ("tool", TOKEN, assistant["tool_calls"][0]["id"])


def test_parallel_calls_run_together(tools_stack: Stack, fake: FakeOpenAI, mcp: FakeMcp) -> None:
    mcp.calls.clear()
    fake.tools(ToolCalls([("t__pair", {"name": "a"}), ("t__pair", {"name": "b"})]))
    fake.reply("Both answered.")
    with tools_stack.client() as c:
        _, events = ask(c, "remote", f"pair {uuid.uuid4().hex[:6]}")
    results = data(events, "tool.result")
    assert [(r["ok"], r["output"]) for r in results] == [(True, "paired a"), (True, "paired b")], results
    assert len(data(events, "tool.call")) == 2


def test_tool_error_timeout_down_server_and_cap_reach_the_model(
    tools_stack: Stack, fake: FakeOpenAI, mcp: FakeMcp
) -> None:
    content = f"everything fails {uuid.uuid4().hex[:6]}"
    fake.tools(
        ToolCalls(
            [
                ("t__fail", {"reason": "no such ticket"}),
                ("t__slow", {"seconds": 120}),
                ("down__anything", {}),
                ("t__big", {"size": 5000}),
                ("nope__tool", {}),
            ]
        )
    )
    fake.reply("I could not do it.")
    with tools_stack.client() as c:
        accepted, events = ask(c, "remote", content)
        assert wait_status(c, accepted["request_id"], {"completed"})["status"] == "completed"
    failed, slow, down, big, unknown = data(events, "tool.result")
    assert not failed["ok"] and "no such ticket" in failed["error"]
    assert not slow["ok"] and slow["error"] == f"tool t.slow timed out after {TIMEOUT} s"
    assert not down["ok"] and down["tool"] == "down.anything"
    assert down["error"].startswith("tool server 'down' is unavailable")
    assert big["ok"] and big["output"] == "x" * 1000 + "\n[truncated: 4000 more characters]"
    assert not unknown["ok"] and unknown["error"] == "unknown tool nope.tool"
    fed = [m["content"] for m in fake.calls_with(content)[-1].messages if m["role"] == "tool"]
    assert fed[0] == f"error: {failed['error']}" and fed[1] == f"error: {slow['error']}"


def test_a_provider_reusing_call_ids_keeps_every_step(tools_stack: Stack, fake: FakeOpenAI) -> None:
    fake.tools(
        ToolCalls([("t__echo", {"text": "a"})], ids=["call_0"]), ToolCalls([("t__echo", {"text": "b"})], ids=["call_0"])
    )
    fake.reply("Both echoed.")
    with tools_stack.client() as c:
        accepted, events = ask(c, "remote", f"same ids {uuid.uuid4().hex[:6]}")
        steps = wait_status(c, accepted["request_id"], {"completed"})["steps"]
    assert [(s["step"], s["output"]) for s in steps] == [(1, "a"), (2, "b")]
    assert len({s["call_id"] for s in steps}) == 2
    assert [r["call_id"] for r in data(events, "tool.result")] == [s["call_id"] for s in steps]


def test_max_steps_ends_the_request(tools_stack: Stack, fake: FakeOpenAI, mcp: FakeMcp) -> None:
    mcp.calls.clear()
    fake.tools(*[ToolCalls([("t__echo", {"text": f"round {i}"})]) for i in range(4)])
    with tools_stack.client() as c:
        accepted, events = ask(c, "remote", f"loop forever {uuid.uuid4().hex[:6]}")
        [failed] = data(events, "run.failed")
        assert failed["error"] == "agent remote stopped after max_steps (3) tool steps without a final answer"
        assert data(events, "done")[-1]["status"] == "failed"
        assert len(wait_status(c, accepted["request_id"], {"failed"})["steps"]) == 3
    assert mcp.calls["echo"] == 3


def test_cancel_during_a_tool_call(tools_stack: Stack, fake: FakeOpenAI, mcp: FakeMcp) -> None:
    mcp.release.clear()
    mcp.cancelled.clear()
    fake.tools(ToolCalls([("t__block", {})]))
    with tools_stack.client() as c:
        accepted = start(c, "remote", f"block {uuid.uuid4().hex[:6]}")
        wait_until(lambda: mcp.in_flight["block"] == 1, 60, "the blocking call to start")
        assert c.post(f"/api/v1/requests/{accepted['request_id']}/cancel").status_code == 202
        events = read_until(c, accepted["stream_url"], done_for(accepted["request_id"]))
        assert [e.event for e in events][-2:] == ["run.cancelled", "done"]
        assert wait_status(c, accepted["request_id"], {"cancelled"})["status"] == "cancelled"
    wait_until(lambda: mcp.cancelled["block"] == 1, 30, "the MCP call to be cancelled on the server")


def test_kill_9_between_tool_calls_never_repeats_a_finished_call(
    tools_stack: Stack, fake: FakeOpenAI, mcp: FakeMcp
) -> None:
    mcp.calls.clear()
    mcp.release.clear()
    workers = [tools_stack.start_worker("tools-chaos", wait=False, LEASE_SECONDS="5") for _ in range(2)]
    for worker in workers:
        tools_stack.wait_ready(worker)
    fake.tools(ToolCalls([("t__record", {"n": 1})]), ToolCalls([("t__block", {}), ("t__hold", {})]))
    fake.reply("Finished after the crash.")
    with tools_stack.client() as c:
        accepted = start(c, "crashy", f"crash {uuid.uuid4().hex[:6]}")
        rid = accepted["request_id"]
        wait_until(
            lambda: mcp.in_flight["block"] == 1 and mcp.in_flight["hold"] == 1, 60, "the second step's calls to start"
        )
        os.kill(tools_stack.worker_running(rid), signal.SIGKILL)
        events = read_until(c, accepted["stream_url"], done_for(rid), timeout=90)
        mcp.release.set()
        retried = [e.json() for e in events if e.json().get("request_id") == rid and e.json()["attempt"] == 2]
        by_type = {t: [e["data"] for e in retried if e["type"] == t] for t in ("tool.call", "tool.result")}
        record_call, block_call, hold_call = by_type["tool.call"]
        record, block, hold = by_type["tool.result"]
        assert (record_call["tool"], record_call.get("replayed")) == ("t.record", True)
        assert (block_call["tool"], block_call.get("replayed")) == ("t.block", True)
        assert (hold_call["tool"], hold_call.get("replayed")) == ("t.hold", True)
        assert (record["ok"], record["output"], record.get("replayed")) == (True, "recorded 1", True)
        assert not block["ok"] and "not marked idempotent" in block["error"] and "replayed" not in block
        assert (hold["ok"], hold["output"], hold.get("replayed")) == (True, "held", None)
        assert text_of(events, rid) == "Finished after the crash."
        stored = wait_status(c, rid, {"completed"})
        assert stored["attempt"] == 2
        assert [(s["tool"], s["status"], s["attempt"]) for s in stored["steps"]] == [
            ("t.record", "ok", 1),
            ("t.block", "error", 2),
            ("t.hold", "ok", 2),
        ]
    assert mcp.calls["record"] == 1, "a finished call ran again"
    assert mcp.calls["block"] == 1, "a call in flight that is not idempotent ran again"
    assert mcp.calls["hold"] == 2, "an idempotent call in flight runs again"
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)


def wait_for_approval(c: httpx.Client, accepted: dict[str, Any]) -> tuple[list[SseEvent], dict[str, Any]]:
    """Read the request's events up to its approval request; returns them and the request as stored."""
    rid = accepted["request_id"]
    events = read_until(
        c, accepted["stream_url"], lambda e: e.event == "tool.approval_required" and e.json()["request_id"] == rid
    )
    return events, wait_status(c, rid, {"waiting"})


def test_approved_call_runs_after_the_decision_and_no_worker_waits(
    tools_stack: Stack, fake: FakeOpenAI, mcp: FakeMcp
) -> None:
    mcp.calls.clear()
    content = f"approve me {uuid.uuid4().hex[:6]}"
    fake.tools(ToolCalls([("t__record", {"n": 7}), ("t__echo", {"text": "free"})]))
    fake.reply("Recorded.")
    user, tenant = f"user-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    counted = counted_today(tools_stack.infra.redis_url, tenant, user)
    with tools_stack.client(user, tenant) as c, tools_stack.client(None, tenant) as other:
        fake.usage_trailer = True  # the provider reports what the turn that asked for the tools used
        try:
            accepted = start(c, "guarded", content)
            rid = accepted["request_id"]
            events, stored = wait_for_approval(c, accepted)
        finally:
            fake.usage_trailer = False
        [pending] = data(events, "tool.approval_required")
        assert (pending["tool"], pending["arguments"]) == ("t.record", {"n": 7})
        assert stored["status"] == "waiting"
        # What the parked attempt used counts against the user's budget now, not after it resumes.
        assert counted() == stored["usage"]["input_tokens"] + stored["usage"]["output_tokens"] > 0
        assert {s["tool"]: s["status"] for s in stored["steps"]} == {"t.record": "awaiting", "t.echo": "ok"}
        assert mcp.calls["record"] == 0 and mcp.calls["echo"] == 1
        assert (
            other.post(f"/api/v1/requests/{rid}/approvals/{pending['call_id']}", json={"approve": True}).status_code
            == 404
        ), "only the request's user decides"
        assert c.post(f"/api/v1/requests/{rid}/approvals/nope", json={"approve": True}).status_code == 404
        r = c.post(f"/api/v1/requests/{rid}/approvals/{pending['call_id']}", json={"approve": True})
        assert r.status_code == 200, r.text
        assert r.json() == {"request_id": rid, "call_id": pending["call_id"], "approved": True, "status": "queued"}
        assert (
            c.post(f"/api/v1/requests/{rid}/approvals/{pending['call_id']}", json={"approve": True}).status_code == 409
        ), "decided once"
        rest = read_until(c, accepted["stream_url"], done_for(rid), last_event_id=events[-1].id)
        results = {d["tool"]: d for d in data(rest, "tool.result")}
        assert (results["t.record"]["ok"], results["t.record"]["output"]) == (True, "recorded 7")
        assert results["t.echo"].get("replayed") is True
        assert data(rest, "run.retrying")[0]["reason"] == "a person decided on a tool call"
        assert text_of(rest, rid) == "Recorded."
        assert wait_status(c, rid, {"completed"})["status"] == "completed"
    assert mcp.calls["record"] == 1 and mcp.calls["echo"] == 1
    tools_log = next(p for p in tools_stack.folder.glob("worker-tools-*.log") if "chaos" not in p.name)
    assert "run waiting for an approval" in tools_log.read_text()


def test_denied_call_is_fed_to_the_model(tools_stack: Stack, fake: FakeOpenAI, mcp: FakeMcp) -> None:
    mcp.calls.clear()
    content = f"deny me {uuid.uuid4().hex[:6]}"
    fake.tools(ToolCalls([("t__record", {"n": 8})]))
    fake.reply("Understood, not recorded.")
    with tools_stack.client() as c:
        accepted = start(c, "guarded", content)
        rid = accepted["request_id"]
        events, _ = wait_for_approval(c, accepted)
        [pending] = data(events, "tool.approval_required")
        r = c.post(
            f"/api/v1/requests/{rid}/approvals/{pending['call_id']}", json={"approve": False, "reason": "not today"}
        )
        assert r.status_code == 200 and r.json()["status"] == "queued", r.text
        rest = read_until(c, accepted["stream_url"], done_for(rid), last_event_id=events[-1].id)
        [result] = data(rest, "tool.result")
        assert not result["ok"] and result["error"] == "a person denied this call to t.record: not today"
        assert wait_status(c, rid, {"completed"})["status"] == "completed"
    assert mcp.calls["record"] == 0
    fed = [m for m in fake.calls_with(content)[-1].messages if m["role"] == "tool"]
    assert fed[-1]["content"] == f"error: {result['error']}"


def test_unanswered_approval_expires_and_frees_the_session(tools_stack: Stack, fake: FakeOpenAI, mcp: FakeMcp) -> None:
    fake.tools(ToolCalls([("t__record", {"n": 9})]))
    with tools_stack.client() as c:
        accepted = start(c, "guarded", f"expire me {uuid.uuid4().hex[:6]}")
        rid = accepted["request_id"]
        events, _ = wait_for_approval(c, accepted)
        fake.reply("The next one.")
        r = c.post(
            "/api/v1/requests/web",
            json={"content": "after the wait", "agent_id": "remote", "session_id": accepted["session_id"]},
        )
        assert r.status_code == 202, r.text
        nxt = r.json()["request_id"]
        assert wait_status(c, nxt, {"queued"})["status"] == "queued", "the waiting request heads its session"
        rest = read_until(
            c, accepted["stream_url"], done_for(nxt), last_event_id=events[-1].id, timeout=APPROVAL_SECONDS + 60
        )
        [failed] = [e.json()["data"] for e in rest if e.event == "run.failed" and e.json()["request_id"] == rid]
        assert "approval" in failed["error"] and "expired" in failed["error"]
        assert wait_status(c, rid, {"failed"})["status"] == "failed"
        assert wait_status(c, nxt, {"completed"})["status"] == "completed"


def test_cancel_while_waiting_ends_the_request(tools_stack: Stack, fake: FakeOpenAI, mcp: FakeMcp) -> None:
    fake.tools(ToolCalls([("t__record", {"n": 10})]))
    with tools_stack.client() as c:
        accepted = start(c, "guarded", f"cancel the wait {uuid.uuid4().hex[:6]}")
        rid = accepted["request_id"]
        events, _ = wait_for_approval(c, accepted)
        assert c.post(f"/api/v1/requests/{rid}/cancel").status_code == 202
        rest = read_until(c, accepted["stream_url"], done_for(rid), last_event_id=events[-1].id)
        assert [e.event for e in rest][-2:] == ["run.cancelled", "done"]
        assert wait_status(c, rid, {"cancelled"})["status"] == "cancelled"
        [pending] = data(events, "tool.approval_required")
        assert (
            c.post(f"/api/v1/requests/{rid}/approvals/{pending['call_id']}", json={"approve": True}).status_code == 409
        )


def cli_chat(stack: Stack, home: Path, content: str, answer: str, user: str, tenant: str) -> subprocess.Popen[str]:
    """The real `relaygate chat` against the stack, asking the `guarded` agent; `answer` is what the person types."""
    typed = home / "typed.txt"
    typed.write_text(answer)
    with typed.open() as stdin:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "chat",
                content,
                "--new",
                "--agent",
                "guarded",
                "--url",
                stack.base_url,
                "--token",
                stack.mint(user, tenant),
            ],
            env={**stack.env, "RELAYGATE_HOME": str(home)},
            cwd=ROOT,
            text=True,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


@pytest.mark.parametrize(
    ("answer", "said", "result"),
    [
        ("y\n", "[approved]", "[tool t.record -> recorded 11]"),
        (
            "not on a friday\n",
            "[denied: not on a friday]",
            "[tool t.record failed: a person denied this call to t.record: not on a friday]",
        ),
    ],
)
def test_cli_prompts_for_approval_and_posts_the_answer(
    tools_stack: Stack, fake: FakeOpenAI, mcp: FakeMcp, tmp_path: Path, answer: str, said: str, result: str
) -> None:
    mcp.calls.clear()
    fake.tools(ToolCalls([("t__record", {"n": 11})]))
    fake.reply("Done in the terminal.")
    user, tenant = f"user-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    proc = cli_chat(tools_stack, tmp_path, f"cli approval {uuid.uuid4().hex[:6]}", answer, user, tenant)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 'approve t.record {"n":11}? [y/N/reason]' in err
    assert said in err and result in err
    assert out.strip() == "Done in the terminal."
    assert mcp.calls["record"] == (1 if answer == "y\n" else 0)


def waiting_request(c: httpx.Client) -> dict[str, Any]:
    """The only request of the client's user, once it waits for an approval (with its steps)."""
    found: list[dict[str, Any]] = []

    def waits() -> bool:
        for session in c.get("/api/v1/sessions").json()["items"]:
            for item in c.get(f"/api/v1/sessions/{session['session_id']}/requests").json()["items"]:
                if item["status"] == "waiting":
                    found[:] = [c.get(f"/api/v1/requests/{item['request_id']}").json()]
        return bool(found)

    wait_until(waits, 60, "the CLI's request to wait for an approval")
    return found[0]


def test_cli_without_an_answer_leaves_the_call_waiting(tools_stack: Stack, fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.tools(ToolCalls([("t__record", {"n": 12})]))
    fake.reply("Decided elsewhere.")
    user, tenant = f"user-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    proc = cli_chat(tools_stack, tmp_path, f"cli no answer {uuid.uuid4().hex[:6]}", "", user, tenant)
    with tools_stack.client(user, tenant) as c:
        waiting = waiting_request(c)
        call_id = waiting["steps"][0]["call_id"]
        assert (
            c.post(f"/api/v1/requests/{waiting['request_id']}/approvals/{call_id}", json={"approve": True}).status_code
            == 200
        )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"[no answer: the call waits; decide with POST /api/v1/requests/{waiting['request_id']}" in err
    assert out.strip() == "Decided elsewhere."
