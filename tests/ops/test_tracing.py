"""One trace from the gateway's HTTP request through the queue to the worker's model call,
with the context carried in the job payload (in-memory exporter; real Postgres and Valkey)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from arq.jobs import deserialize_job
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind
from prometheus_client import REGISTRY

from api.main import create_app
from common.agents.registry import load_agents
from common.platform import db, tracing
from common.platform import logging as rg_logging
from common.platform.credentials import mint_token
from common.platform.keys import queue_name
from common.queue import enqueue as queue
from common.streams.protocol import connect as connect_streams
from common.streams.writer import StreamWriter
from tests.conftest import Infra, settings_for
from workers import model
from workers.observe import observed
from workers.runner import WorkerRuntime, process_request

FEATURE = "tracing"
QUEUE = queue_name(FEATURE)
AGENTS = f"""
agents:
  - {{id: assistant, feature: default, default: true}}
  - {{id: tracer, feature: {FEATURE}}}
"""


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.configure("test", provider)
    try:
        yield memory
    finally:
        tracing._provider = NoOpTracerProvider()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def total(name: str) -> float:
    return sum(s.value for family in REGISTRY.collect() for s in family.samples if s.name == name)


async def test_one_trace_spans_gateway_queue_worker_and_model(
    infra: Infra, tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS)
    settings = settings_for(infra, agents_file=agents)
    app = create_app(settings)
    token = mint_token(settings, user_id="tracer-user", tenant_id="tracer-tenant")
    body = {
        "content": "trace me",
        "agent_id": "tracer",
        "new_session": True,
        "metadata": {"offline": {"tokens": 5, "tokens_per_second": 1000}},
    }
    enqueued = metric("relaygate_jobs_enqueued_total", queue=QUEUE)
    async with app.router.lifespan_context(app):
        gw = app.state.gateway
        await gw.queue.delete(QUEUE)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            accepted = await client.post(
                "/api/v1/requests/web", json=body, headers={"Authorization": f"Bearer {token}"}
            )
            assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["request_id"]
        job = await gw.queue.get(f"arq:job:{request_id}")
        raw = deserialize_job(job).args[0]
        await gw.queue.delete(QUEUE, f"arq:job:{request_id}")
    assert metric("relaygate_jobs_enqueued_total", queue=QUEUE) == enqueued + 1
    assert raw["trace_context"]["traceparent"]
    http_spans = {s.context.trace_id for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER}
    exporter.clear()

    model.configure()
    streams = connect_streams(settings.stream_redis_url, cluster=False, max_connections=8)
    rt = WorkerRuntime(
        settings=settings,
        db=await db.create_pool(settings.database_url, name="test-worker"),
        streams=streams,
        queue=await queue.connect(settings.queue_redis_url),
        writer=StreamWriter(
            streams,
            buckets=settings.stream_buckets,
            maxlen=settings.stream_maxlen,
            ttl_seconds=settings.stream_ttl_seconds,
        ),
        agents=load_agents(agents),
    )
    started = metric("relaygate_jobs_started_total", queue=QUEUE)
    tokens = total("relaygate_tokens_generated_total")
    lines: list[str] = []
    handler = logging.Handler()
    handler.setFormatter(rg_logging.JsonFormatter())
    handler.emit = lambda record: lines.append(handler.format(record))  # type: ignore[method-assign]
    logging.getLogger("workers").addHandler(handler)
    flusher = asyncio.create_task(rt.flusher.run())  # the worker's one token writer (workers.maintenance.start)
    try:
        status = await observed(process_request, QUEUE)({"rt": rt}, raw)
    finally:
        flusher.cancel()
        await rt.streams.aclose()
        await rt.queue.aclose()
        await rt.db.close()
        logging.getLogger("workers").removeHandler(handler)
    assert status == "completed"
    assert metric("relaygate_jobs_started_total", queue=QUEUE) == started + 1
    assert metric("relaygate_jobs_succeeded_total", queue=QUEUE) >= 1
    assert total("relaygate_tokens_generated_total") >= tokens + 5
    assert metric("relaygate_job_run_seconds_count", queue=QUEUE, status="completed") >= 1

    spans: list[ReadableSpan] = list(exporter.get_finished_spans())
    by_name = {s.name: s for s in spans}
    consumer = by_name[f"process {QUEUE}"]
    model_call = by_name["model call"]
    assert consumer.kind == SpanKind.CONSUMER
    assert consumer.context.trace_id in http_spans, "the worker's span continues the HTTP request's trace"
    assert model_call.context.trace_id == consumer.context.trace_id
    assert model_call.parent is not None and model_call.parent.span_id == consumer.context.span_id

    assert lines
    for line in map(orjson.loads, lines):
        assert (line["request_id"], line["tenant_id"]) == (request_id, "tracer-tenant")
        assert line["session_id"] == raw["session_id"]
        assert line["trace_id"] == format(consumer.context.trace_id, "032x")


def test_tracing_is_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert tracing.configure("relaygate-api") is False
    assert not tracing.enabled()
    assert tracing.inject() == {}
