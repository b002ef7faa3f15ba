"""OpenTelemetry tracing, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (or a test installs a
provider). The trace context travels in the job payload, so one trace runs from the HTTP
request through the queue to the worker's model call."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NoOpTracerProvider, Span, SpanKind, Status, StatusCode

_provider: trace.TracerProvider = NoOpTracerProvider()

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


def configure(service: str, provider: trace.TracerProvider | None = None) -> bool:
    """Install `provider`, or an OTLP/HTTP exporter when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    global _provider
    if provider is None:
        if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return False
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        sdk = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
        sdk.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        provider = sdk
    _provider = provider
    return True


def enabled() -> bool:
    return not isinstance(_provider, NoOpTracerProvider)


def tracer() -> trace.Tracer:
    return _provider.get_tracer("relaygate")


def inject() -> dict[str, str]:
    """The current trace context as W3C headers (empty when tracing is off)."""
    carrier: dict[str, str] = {}
    if enabled():
        propagate.inject(carrier)
    return carrier


def extract(carrier: dict[str, str]) -> Context:
    return propagate.extract(carrier)


@contextmanager
def span(
    name: str,
    *,
    parent: dict[str, str] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Span]:
    """A span under the current one, or under the propagated `parent` context."""
    context = extract(parent) if parent else None
    with tracer().start_as_current_span(name, context=context, kind=kind, attributes=attributes) as current:
        yield current


class TracingMiddleware:
    """One SERVER span per HTTP request (pure ASGI, so streamed responses stay streamed)."""

    def __init__(self, app: Asgi) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not enabled():
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        status = 0

        async def send_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with tracer().start_as_current_span(
            f"HTTP {scope['method']}", context=extract(headers), kind=SpanKind.SERVER
        ) as current:
            try:
                await self.app(scope, receive, send_status)
            finally:
                route = getattr(scope.get("route"), "path", scope.get("path", ""))
                current.update_name(f"{scope['method']} {route}")
                current.set_attribute("http.route", route)
                current.set_attribute("http.response.status_code", status)
                if status >= 500:
                    current.set_status(Status(StatusCode.ERROR))
