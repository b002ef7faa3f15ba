"""CloudEvents export to `EVENT_SINK_URL` (e.g. a Knative broker): never on the request path.

`emit(...)` only puts the event in a bounded in-process queue; one background task per
process POSTs them in binary HTTP mode with retries. With no sink configured it does
nothing. Hooks: request accepted/finished, session created/ended, run status changes;
the dispatcher reports `delivery.*` the same way (`emit("delivery.sent", ...)`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent

from common.platform.settings import get_settings

log = logging.getLogger(__name__)

SOURCE = "relaygate"
QUEUE_SIZE = 10_000


class EventSink:
    """A bounded queue drained by one sender task; a full queue drops (and logs) rather than blocks."""

    def __init__(self, url: str, *, retries: int, backoff_seconds: float = 0.2) -> None:
        self.url = url
        self.retries = max(1, retries)
        self.backoff = backoff_seconds
        self.queue: asyncio.Queue[CloudEvent] = asyncio.Queue(QUEUE_SIZE)
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0

    def put(self, event: CloudEvent) -> None:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            if self.task is not None and self.task.get_loop() is not loop:
                self.queue = asyncio.Queue(QUEUE_SIZE)  # the old loop's sender is gone with it
            self.task = loop.create_task(self._run(), name="event-sink")
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("event sink queue full; event dropped", extra={"type": event.get_type()})

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                event = await self.queue.get()
                try:
                    await self._send(client, event)
                finally:
                    self.queue.task_done()

    async def _send(self, client: httpx.AsyncClient, event: CloudEvent) -> None:
        message = to_binary_event(event)
        for attempt in range(1, self.retries + 1):
            try:
                response = await client.post(self.url, headers=message.headers, content=message.body)
                if response.status_code < 500 and response.status_code != 429:
                    if response.status_code >= 400:
                        log.warning(
                            "event sink refused an event",
                            extra={"status": response.status_code, "type": event.get_type()},
                        )
                    return
            except httpx.HTTPError as exc:
                log.info("event sink unreachable", extra={"attempt": attempt, "error": type(exc).__name__})
            if attempt < self.retries:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        log.warning("event sink delivery failed; event dropped", extra={"type": event.get_type(), "id": event.get_id()})

    async def drain(self) -> None:
        """Wait until everything queued was sent or given up (tests, shutdown)."""
        await self.queue.join()


_sink: EventSink | None = None
_configured = False


def current() -> EventSink | None:
    global _sink, _configured
    if not _configured:
        settings = get_settings()
        _sink = (
            EventSink(settings.event_sink_url, retries=settings.event_sink_retries) if settings.event_sink_url else None
        )
        _configured = True
    return _sink


def configure(url: str, *, retries: int = 5, backoff_seconds: float = 0.2) -> EventSink | None:
    """Point this process at a sink (or none, with an empty url)."""
    global _sink, _configured
    _sink = EventSink(url, retries=retries, backoff_seconds=backoff_seconds) if url else None
    _configured = True
    return _sink


def emit(kind: str, subject: str, data: dict[str, Any], *, tenant_id: str, correlation_id: str = "") -> None:
    """Queue `com.relaygate.<kind>` for the sink; a no-op without one; never raises."""
    sink = current()
    if sink is None:
        return
    try:
        attributes = {
            "type": f"com.relaygate.{kind}",
            "source": f"/{SOURCE}/{tenant_id}",
            "subject": subject,
            "datacontenttype": "application/json",
            "tenantid": tenant_id,
        }
        if correlation_id:
            attributes["correlationid"] = correlation_id
        sink.put(CloudEvent(attributes, data))
    except Exception:
        log.exception("event sink: could not queue an event")
