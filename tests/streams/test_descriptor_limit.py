"""A gateway under a low descriptor limit refuses new streams with 503 and keeps every stream it took."""

from __future__ import annotations

import contextlib
import uuid

import httpx

from common.platform.credentials import mint_token
from tests.conftest import Stack, settings_for, wait_until

NOFILE = 256
RESERVE = 128  # max streams = 256 - 128


def _open(client: httpx.Client, session: str) -> httpx.Response:
    request = client.build_request("GET", f"/api/v1/sessions/{session}/stream", params={"from": "$"})
    return client.send(request, stream=True)


def _keepalive(response: httpx.Response) -> bool:
    """The stream is alive: a heartbeat comes through it."""
    return any(line == ": keepalive" for line in response.iter_lines())


def test_streams_past_the_reserve_get_503_and_held_ones_stay(new_stack: Stack) -> None:
    new_stack.start_gateway(nofile=NOFILE, STREAM_FD_RESERVE=str(RESERVE), SSE_HEARTBEAT_SECONDS="0.3")
    tenant, user = f"t-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    token = mint_token(settings_for(new_stack.infra), user_id=user, tenant_id=tenant)
    limits = httpx.Limits(max_connections=NOFILE * 2, max_keepalive_connections=0)
    with (
        httpx.Client(
            base_url=new_stack.base_url, timeout=30, limits=limits, headers={"Authorization": f"Bearer {token}"}
        ) as client,
        contextlib.ExitStack() as held,
    ):
        sessions = [client.post("/api/v1/sessions", json={}).json()["session_id"] for _ in range(RESERVE + 3)]
        streams = []
        for session in sessions[:RESERVE]:
            response = _open(client, session)
            held.callback(response.close)
            assert response.status_code == 200, response.read()
            streams.append(response)

        refused = _open(client, sessions[RESERVE])
        held.callback(refused.close)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
        body = refused.read()
        assert refused.json()["error"] == "service_unavailable", body
        assert "descriptor limit (256)" in refused.json()["detail"]

        # Requests other than streams still have their descriptors.
        assert client.get(f"/api/v1/sessions/{sessions[0]}").status_code == 200
        # Every accepted stream is still open and served.
        assert all(_keepalive(response) for response in streams)

        streams.pop().close()

        def reopened() -> bool:
            response = _open(client, sessions[RESERVE + 1])
            if response.status_code == 200:
                held.callback(response.close)
                return True
            response.close()
            return False

        wait_until(reopened, 15, "a stream to be taken once one was closed")

    scraper = mint_token(settings_for(new_stack.infra), user_id=user, tenant_id=tenant, scopes=["metrics"])
    metrics = httpx.get(f"{new_stack.base_url}/metrics", headers={"Authorization": f"Bearer {scraper}"}).text
    assert 'relaygate_limit_refusals_total{limit="file_descriptors"} 1.0' in metrics
