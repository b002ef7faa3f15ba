"""Helpers that read the gateway's SSE streams the way a client does."""

from __future__ import annotations

import time
from typing import Any

import httpx

from cli.sse import SseEvent, iter_events


def read_until(
    client: httpx.Client,
    url: str,
    stop: Any,
    *,
    last_event_id: str | None = None,
    params: dict[str, str] | None = None,
    timeout: float = 60,
) -> list[SseEvent]:
    """GET an SSE stream and collect events until `stop(event)` is true."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    events: list[SseEvent] = []
    deadline = time.monotonic() + timeout
    with client.stream(
        "GET", url, headers=headers, params=params, timeout=httpx.Timeout(timeout, read=timeout)
    ) as response:
        assert response.status_code == 200, response.read()
        for event in iter_events(response):
            events.append(event)
            if stop(event) or time.monotonic() > deadline:
                break
    return events


def done_for(request_id: str) -> Any:
    return lambda e: e.event == "done" and e.json()["request_id"] == request_id


def text_of(events: list[SseEvent], request_id: str) -> str:
    """The reply as a client assembles it: tokens of the latest attempt only."""
    latest = max((e.json()["attempt"] for e in events if e.json().get("request_id") == request_id), default=1)
    return "".join(
        e.json()["data"]["text"]
        for e in events
        if e.event == "token" and e.json()["request_id"] == request_id and e.json()["attempt"] == latest
    )


def wait_status(client: httpx.Client, request_id: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/api/v1/requests/{request_id}").json()
        if body.get("status") in statuses or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def offline(tokens: int, rate: float) -> dict[str, Any]:
    return {"offline": {"tokens": tokens, "tokens_per_second": rate}}
