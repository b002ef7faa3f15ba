"""SIGTERM on a gateway: open SSE streams end with a reconnect frame, and the process exits cleanly."""

from __future__ import annotations

import signal
import threading

from tests.conftest import Stack


def test_sigterm_ends_open_streams_with_a_reconnect_frame(new_stack: Stack) -> None:
    new_stack.start_gateway()
    gateway = new_stack.gateway
    assert gateway is not None
    with new_stack.client() as client:
        session = client.post("/api/v1/sessions", json={}).json()["session_id"]
        lines: list[str] = []
        opened = threading.Event()

        def follow() -> None:
            with client.stream("GET", f"/api/v1/sessions/{session}/stream", timeout=30) as response:
                assert response.status_code == 200
                opened.set()
                lines.extend(response.iter_lines())

        reader = threading.Thread(target=follow)
        reader.start()
        assert opened.wait(10)
        gateway.send_signal(signal.SIGTERM)
        reader.join(20)
        assert not reader.is_alive()
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert gateway.wait(20) in (0, -signal.SIGTERM), new_stack.logs()
    assert "Application shutdown complete" in new_stack.logs()
    frames = "\n".join(lines)
    assert "event: reconnect" in frames and '"reason":"gateway shutting down"' in frames, frames
    assert frames.rstrip().endswith('data: {"type":"reconnect","reason":"gateway shutting down"}')
    assert "retry: 0" in frames
