"""Errors before the 200: bad resume points, oversized chunked bodies, Redis down; supervised hub readers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from cli.dev.embedded import EmbeddedValkey
from common.streams.hub import Entry, batches
from common.streams.protocol import Event
from tests.conftest import Infra
from tests.support.app import App


@pytest.mark.parametrize("resume", ["18446744073709551616-0", "0-18446744073709551616"])
async def test_resume_ids_beyond_64_bits_are_400(app: App, resume: str) -> None:
    async with app.client() as client:
        sid = (await client.post("/api/v1/sessions", json={})).json()["session_id"]
        by_header = await client.get(f"/api/v1/sessions/{sid}/stream", headers={"Last-Event-ID": resume})
        by_query = await client.get(f"/api/v1/sessions/{sid}/stream", params={"from": resume})
    for response in (by_header, by_query):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "bad_request"


async def test_chunked_body_over_the_limit_is_413(make_app: Callable[..., Any]) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"content": "'
        for _ in range(8):
            yield b"x" * 1024
        yield b'"}'

    async with make_app(max_body_bytes=4096) as app, app.client() as client:
        response = await client.post(
            "/api/v1/requests/web", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413, response.text
        assert response.json() == {"error": "payload_too_large", "detail": "request body exceeds 4096 bytes"}
        small = await client.post("/api/v1/requests/web", json={"content": "fits"})
        assert small.status_code == 202


@pytest.fixture
def private_valkey(tmp_path: Path) -> AsyncIterator[EmbeddedValkey]:
    valkey = EmbeddedValkey(tmp_path / "valkey", persistent=False)
    try:
        yield valkey  # type: ignore[misc]
    finally:
        valkey.stop()


async def test_sse_routes_answer_503_when_redis_is_down(
    make_app: Callable[..., Any], infra: Infra, private_valkey: EmbeddedValkey
) -> None:
    async with make_app(redis_url=private_valkey.url, queue_redis_url="", stream_redis_url="") as app:
        async with app.client() as client:
            sid = (await client.post("/api/v1/sessions", json={})).json()["session_id"]
            private_valkey.stop()
            for method, path, body, headers in (
                ("GET", f"/api/v1/sessions/{sid}/stream", None, {}),
                ("POST", "/api/v1/requests/web", {"content": "hi"}, {"Accept": "text/event-stream"}),
                ("POST", "/stream?feature_id=gateway-tests&chat_id=c", {}, {}),
            ):
                response = await client.request(method, path, json=body, headers=headers)
                assert response.status_code == 503, (path, response.text)
                assert response.json()["error"] == "service_unavailable"
                assert response.headers["retry-after"]


async def test_a_crashed_hub_reader_restarts_from_its_cursor_and_health_says_so(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = app.gateway.hub
    session = "11111111-2222-3333-4444-555555555555"
    key = app.gateway.writer.key(session)
    reader = hub._reader(key.encode())
    real_open = reader.connections.open  # shared by the readers; only this one has a key to read
    broken = asyncio.Event()
    broken.set()

    async def open_or_crash(key: bytes, *, after_error: bool) -> Any:
        if broken.is_set():
            raise RuntimeError("a bug in the reader")
        return await real_open(key, after_error=after_error)

    monkeypatch.setattr(reader.connections, "open", open_or_crash)
    received: list[Entry] = []

    async def follow() -> None:
        async for batch in batches(hub, key, (0, 0)):
            received.extend(i for i in batch if isinstance(i, Entry))
            if received:
                return

    follower = asyncio.create_task(follow())
    async with app.client() as client:
        for _ in range(100):
            health = await client.get("/health")
            if health.status_code == 503:
                break
            await asyncio.sleep(0.1)
        assert health.status_code == 503
        assert health.json()["stream_readers"].startswith("unavailable: 1 of")
        await app.gateway.writer.append(session, [Event(type="token", request_id="r1", data={"text": "hi"})])
        broken.clear()
        await asyncio.wait_for(follower, 30)
        assert [e.type for e in received] == [b"token"]
        for _ in range(100):
            await asyncio.sleep(0.1)
            if (await client.get("/health")).status_code == 200:
                break
        assert (await client.get("/health")).json()["stream_readers"] == "ok"


async def test_health_probes_at_most_once_per_period(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    from api import health

    probes = 0
    real = health._probe_all

    async def counted(gw: Any) -> dict[str, str]:
        nonlocal probes
        probes += 1
        return await real(gw)

    monkeypatch.setattr(health, "_probe_all", counted)
    monkeypatch.setattr(health, "PROBE_SECONDS", 3600.0)
    async with app.client(headers={}) as anonymous:
        answers = await asyncio.gather(*(anonymous.get("/health") for _ in range(20)))
    assert {a.status_code for a in answers} == {200}
    assert probes == 1
