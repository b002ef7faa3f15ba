"""CloudEvents in (structured and binary HTTP mode) and out (the sink), against real servers."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http, to_binary_event, to_structured_event
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from common.platform import sink
from tests.flows.conftest import dag, task


def _event(kind: str, data: dict[str, Any], event_id: str | None = None) -> CloudEvent:
    return CloudEvent({"type": kind, "source": "/tests/cloudevents", "id": event_id or uuid.uuid4().hex}, data)


async def test_structured_run_requested_starts_a_run_once(gateway_app: Any) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    event = _event(
        "com.relaygate.run.requested", {"flow_id": "f1", "input": {"n": 1}, "flow_definition": dag(tenant, task("a"))}
    )
    message = to_structured_event(event)
    assert message.headers["content-type"] == "application/cloudevents+json"
    async with gw.client("alice", tenant) as c:
        first = await c.post("/api/v1/events/cloudevents", content=message.body, headers=message.headers)
        assert first.status_code == 202, first.text
        again = await c.post("/api/v1/events/cloudevents", content=message.body, headers=message.headers)
        assert again.json() == first.json()
        run = (await c.get(f"/v1/runs/{first.json()['run_id']}")).json()
        assert run["input"] == {"n": 1} and run["tenant_id"] == tenant and run["user_id"] == "alice"
        foreign = to_structured_event(
            _event(
                "com.relaygate.run.requested",
                {"flow_id": "f1", "tenant_id": "other", "flow_definition": dag("other", task("a"))},
            )
        )
        r = await c.post("/api/v1/events/cloudevents", content=foreign.body, headers=foreign.headers)
        assert r.status_code == 403
        invalid = to_structured_event(
            _event("com.relaygate.run.requested", {"flow_id": "f1", "flow_definition": dag(tenant, task("a", "nope"))})
        )
        r = await c.post("/api/v1/events/cloudevents", content=invalid.body, headers=invalid.headers)
        assert r.status_code == 400 and "unknown task type 'nope'" in r.json()["detail"][0]
        no_id = orjson.loads(message.body)
        del no_id["id"]
        r = await c.post("/api/v1/events/cloudevents", content=orjson.dumps(no_id), headers=message.headers)
        assert r.status_code == 400 and r.json()["detail"] == "not a valid CloudEvent: missing id"
    trigger = await gw.gateway.db.fetchval(
        "SELECT trigger FROM flow_runs_audit WHERE run_id = $1", first.json()["run_id"]
    )
    assert trigger == {"via": "cloudevents", "id": event.get_id(), "source": "/tests/cloudevents"}


async def test_binary_request_created_starts_a_request_and_other_types_are_refused(gateway_app: Any) -> None:
    gw = await gateway_app()
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    event = _event(
        "com.relaygate.request.created", {"content": "from an event", "new_session": True, "agent_id": "orphan"}
    )
    message = to_binary_event(event)
    assert message.headers["ce-type"] == "com.relaygate.request.created"
    async with gw.client("bob", tenant) as c:
        r = await c.post("/api/v1/events/cloudevents", content=message.body, headers=message.headers)
        assert r.status_code == 202, r.text
        request_id = r.json()["request_id"]
        stored = (await c.get(f"/api/v1/requests/{request_id}")).json()
        assert stored["content"] == "from an event" and stored["agent_id"] == "orphan"
        row = await gw.gateway.db.fetchrow(
            "SELECT cloudevent_id, cloudevent_type, tenant_id, user_id FROM request_logs WHERE request_id = $1",
            request_id,
        )
        assert dict(row) == {
            "cloudevent_id": event.get_id(),
            "cloudevent_type": "com.relaygate.request.created",
            "tenant_id": tenant,
            "user_id": "bob",
        }
        other = to_binary_event(_event("com.example.unknown", {"x": 1}))
        r = await c.post("/api/v1/events/cloudevents", content=other.body, headers=other.headers)
        assert r.status_code == 400 and "unsupported CloudEvent type" in r.json()["detail"]
        broken = {k: v for k, v in message.headers.items() if k != "ce-id"}
        r = await c.post("/api/v1/events/cloudevents", content=message.body, headers=broken)
        assert r.status_code == 400 and "not a valid CloudEvent" in r.json()["detail"]
        empty = to_binary_event(_event("com.relaygate.request.created", {"content": ""}))
        r = await c.post("/api/v1/events/cloudevents", content=empty.body, headers=empty.headers)
        assert r.status_code == 400 and r.json()["detail"][0]["field"] == "data.content"
        c.headers.pop("Authorization")
        assert (
            await c.post("/api/v1/events/cloudevents", content=message.body, headers=message.headers)
        ).status_code == 401


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]
    refuse_first: set[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        event_id = self.headers.get("ce-id", "")
        if event_id not in self.refuse_first:
            self.refuse_first.add(event_id)  # every event fails once: the sink must retry it
            self.send_response(503)
        else:
            self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    handler = type("Receiver", (_Receiver,), {"received": received, "refuse_first": set()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/events", received
    finally:
        server.shutdown()
        sink.configure("")


async def test_lifecycle_events_reach_the_sink_as_cloudevents_with_retries(gateway_app: Any, receiver: Any) -> None:
    url, received = receiver
    exporter = sink.configure(url, retries=3, backoff_seconds=0.01)
    assert exporter is not None
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    async with gw.client("alice", tenant) as c:
        run = (
            await c.post(
                "/v1/runs", json={"flow_id": "f1", "tenant_id": tenant, "flow_definition": dag(tenant, task("a"))}
            )
        ).json()
        await c.post(f"/v1/runs/{run['run_id']}/cancel")
        session = (await c.post("/api/v1/sessions", json={"integration_type": "web"})).json()
        await c.post(f"/api/v1/sessions/{session['session_id']}/end")
    await asyncio.wait_for(exporter.drain(), 20)
    events = [from_http(HTTPMessage(headers, body), JSONFormat()) for headers, body in received]
    seen = [(e.get_type(), e.get_subject()) for e in events]
    assert seen == [
        ("com.relaygate.run.created", run["run_id"]),
        ("com.relaygate.run.cancelled", run["run_id"]),
        ("com.relaygate.session.created", session["session_id"]),
        ("com.relaygate.session.ended", session["session_id"]),
    ]
    assert all(e.get_extension("tenantid") == tenant for e in events)
    assert events[1].get_data() == {"flow_id": "f1", "reason": "cancelled by alice"}


async def test_an_unreachable_sink_does_not_hold_up_requests(gateway_app: Any) -> None:
    exporter = sink.configure("http://127.0.0.1:9/unreachable", retries=2, backoff_seconds=0.01)
    assert exporter is not None
    try:
        gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
        tenant = f"t-{uuid.uuid4().hex[:6]}"
        async with gw.client("alice", tenant) as c:
            r = await c.post(
                "/v1/runs", json={"flow_id": "f1", "tenant_id": tenant, "flow_definition": dag(tenant, task("a"))}
            )
            assert r.status_code == 202
        await asyncio.wait_for(exporter.drain(), 20)
        assert exporter.queue.empty()
    finally:
        sink.configure("")
