"""The built-in task types on real workers: llm (streamed), http (a local server) and agent (a relaygate agent)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import Stack
from tests.flows.conftest import dag, task
from tests.support.streams import read_until
from workers.offline_model import compose_reply


class _Api(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        status = 500 if body.get("explode") else 200
        reply = json.dumps({"path": self.path, "got": body}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def local_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_llm_http_and_agent_tasks_chain_their_outputs(stack: Stack, local_api: str) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    with stack.client("alice", tenant) as c:
        flow = dag(
            tenant,
            task("draft", "llm", input={"prompt": "Summarise ticket {{ input.ticket }}"}),
            task(
                "post",
                "http",
                ("draft",),
                input={
                    "method": "POST",
                    "url": local_api + "/tickets/{{ input.ticket }}",
                    "json": {"summary": "{{ tasks.draft.output.text }}", "n": "{{ input.n }}"},
                },
            ),
            task("ask", "agent", ("post",), input={"content": "Ticket stored at {{ tasks.post.output.json.path }}"}),
        )
        r = c.post(
            "/v1/runs",
            json={"flow_id": "f1", "tenant_id": tenant, "flow_definition": flow, "input": {"ticket": "T-7", "n": 3}},
        )
        run_id = r.json()["run_id"]
        events = read_until(
            c, f"/v1/runs/{run_id}/stream", lambda e: e.event == "done" and e.json()["request_id"] == run_id
        )
        assert [e.event for e in events][-2:] == ["run.completed", "done"], [e.data for e in events]
        expected = "".join(compose_reply("Summarise ticket T-7", 30))
        tokens = [e.json()["data"] for e in events if e.event == "token"]
        assert tokens and {t["task_id"] for t in tokens} == {"draft"}
        assert "".join(t["text"] for t in tokens) == expected
        output = c.get(f"/v1/runs/{run_id}").json()["output"]["tasks"]
        assert output["draft"]["text"] == expected
        assert output["post"] == {"status": 200, "json": {"path": "/tickets/T-7", "got": {"summary": expected, "n": 3}}}
        agent = output["ask"]
        assert agent["content"] == "".join(compose_reply("Ticket stored at /tickets/T-7", 30))
        assert agent["agent_id"] == "assistant"
        # The agent's request lives in the run's own session, owned by the run's tenant and user.
        request = c.get(f"/api/v1/requests/{agent['request_id']}").json()
        assert request["status"] == "completed" and request["session_id"] == agent["session_id"]

        failing = c.post(
            "/v1/runs",
            json={
                "flow_id": "f1",
                "tenant_id": tenant,
                "flow_definition": dag(
                    tenant, task("boom", "http", input={"method": "POST", "url": local_api, "json": {"explode": True}})
                ),
            },
        )
        run_id = failing.json()["run_id"]
        events = read_until(
            c, f"/v1/runs/{run_id}/stream", lambda e: e.event == "done" and e.json()["request_id"] == run_id
        )
        failed = next(e.json()["data"] for e in events if e.event == "task.failed")
        assert failed["error"] == "HttpTaskError: POST answered 500"
