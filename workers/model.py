"""Model calls: the built-in offline model, a lean client for OpenAI-compatible endpoints, else litellm.

Every call goes through `stream_reply`, whichever path serves it (`path_for`): the offline model is a
native generator (workers.offline_model); an `openai/` or `hosted_vllm/` model with LLM_API_BASE set
streams through workers.openai_stream unless LLM_FAST_PATH=off; every other provider goes through
litellm. litellm's import is most of a worker's start (seconds of CPU): `configure` starts it in a
thread, so the worker opens its stores and answers on the first two paths meanwhile, and a litellm
call waits for it only if it comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import Future
from types import ModuleType
from typing import Any, Literal

from tenacity import AsyncRetrying, retry_if_exception, retry_if_exception_type, stop_after_attempt, wait_exponential

from common.agents.registry import Agent, AgentRegistry
from common.platform.redact import scrub
from common.platform.settings import Settings
from common.requests.models import model_options
from workers import offline_model, openai_stream
from workers.metering import Meter
from workers.tool_requests import ToolRequest

log = logging.getLogger(__name__)

OFFLINE_PROVIDER = "relaygate-offline"
OFFLINE_MODEL = f"{OFFLINE_PROVIDER}/echo"
# Providers whose streams the lean client serves when LLM_API_BASE names their endpoint, and the
# environment variable litellm would take their key from when LLM_API_KEY is empty.
OPENAI_COMPATIBLE = {"openai": "OPENAI_API_KEY", "hosted_vllm": "HOSTED_VLLM_API_KEY"}
Path = Literal["offline", "openai", "litellm"]

# How long a finished stream's trailer may take before its connection is just closed.
TRAILER_SECONDS = 2.0

_loaded: Future[ModuleType] | None = None


def configure() -> None:
    """Start loading and configuring litellm in a background thread (once per process). A worker whose
    models all run without it never calls this: litellm then loads only when a token count needs it."""
    global _loaded
    if _loaded is not None:
        return
    _loaded = Future()
    loaded = _loaded

    def load() -> None:
        started = time.monotonic()
        try:
            loaded.set_result(_load())
        except BaseException as exc:
            log.exception("loading litellm failed")
            loaded.set_exception(exc)
        else:
            log.info("litellm loaded", extra={"seconds": round(time.monotonic() - started, 2)})

    threading.Thread(target=load, name="litellm-import", daemon=True).start()


def ready() -> bool:
    """Whether litellm is loaded (litellm calls start without waiting)."""
    return _loaded is not None and _loaded.done()


def path_for(model: str, settings: Settings) -> Path:
    """Which client serves `model`: the offline model, the lean OpenAI-compatible one, or litellm."""
    provider, _, _ = model.partition("/")
    if provider == OFFLINE_PROVIDER:
        return "offline"
    if settings.llm_fast_path == "auto" and settings.llm_api_base and provider in OPENAI_COMPATIBLE:
        return "openai"
    return "litellm"


def ready_for(models: Iterable[str], settings: Settings) -> bool:
    """Whether calls to every one of `models` start without waiting for litellm."""
    return ready() or all(path_for(m, settings) != "litellm" for m in models)


async def litellm_module() -> ModuleType:
    """litellm, once loaded (loading starts here if nothing started it)."""
    configure()
    assert _loaded is not None
    return await asyncio.wrap_future(_loaded)


def _load() -> ModuleType:
    import litellm

    # litellm imports the OpenAI SDK's resources on its first call, synchronously; doing it
    # here keeps that stall out of the event loop that runs the lease heartbeats.
    import openai.resources.chat  # noqa: F401

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    # relaygate bills nothing from litellm and registers no callbacks: per-chunk logging threads
    # and end-user cost tracking are pure cost per token. (turn_off_message_logging stays off:
    # it makes litellm deep-copy and redact every call's messages for loggers we do not have.)
    litellm.disable_streaming_logging = True
    litellm.disable_end_user_cost_tracking = True
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.callbacks = []
    return litellm


def transient_errors(litellm: ModuleType) -> tuple[type[Exception], ...]:
    """Provider failures worth retrying before the first chunk."""
    errors = litellm.exceptions
    return (
        errors.APIConnectionError,
        errors.RateLimitError,
        errors.ServiceUnavailableError,
        errors.InternalServerError,
        errors.Timeout,
    )


def model_for(agent: Agent, settings: Settings) -> str:
    return agent.model or settings.llm_model or OFFLINE_MODEL


def configured(settings: Settings, agents: AgentRegistry) -> frozenset[str]:
    """The models this deployment set up (LLM_MODEL, or the offline model, and every agent's): the only
    ones a flow's llm task may name, so a flow cannot pick a provider or a local endpoint of its own."""
    return frozenset({settings.llm_model or OFFLINE_MODEL, *(model_for(a, settings) for a in agents.agents)})


def describe_error(exc: BaseException) -> str:
    """A short, readable reason for clients: truncated, scrubbed of URLs and keys, never a traceback."""
    message = scrub(" ".join(str(exc).split()))
    name = type(exc).__name__
    return f"model provider error ({name}): {message[:300]}" if message else f"model provider error ({name})"


_usage_streamers: dict[str, bool] = {}


def _streams_usage(litellm: ModuleType, model: str) -> bool:
    """Whether the provider takes `stream_options` (then it is asked to end a stream with its usage)."""
    known = _usage_streamers.get(model)
    if known is None:
        try:
            name, provider, _, _ = litellm.get_llm_provider(model)
            supported = litellm.get_supported_openai_params(model=name, custom_llm_provider=provider)
        except Exception:
            supported = None
        known = _usage_streamers[model] = bool(supported) and "stream_options" in supported
    return known


async def stream_reply(
    settings: Settings,
    model: str,
    messages: list[dict[str, Any]],
    metadata: dict[str, Any],
    tools: list[dict[str, Any]] | None = None,
    calls: list[ToolRequest] | None = None,
    meter: Meter | None = None,
) -> AsyncIterator[str]:
    """Yields text chunks; with `tools`, the tool calls the model asks for are collected into `calls`.
    `meter` receives the chunk count and the provider's usage, when it sends one. Transient failures
    before the first chunk are retried with backoff."""
    meter = meter if meter is not None else Meter()
    path = path_for(model, settings)
    meter.begin(messages, path == "offline", path == "litellm")
    options = model_options(metadata)
    source: AsyncIterator[str]
    if path == "offline":
        length, rate = offline_model.options(
            options.get("offline"), settings.offline_model_tokens, settings.offline_model_tokens_per_second
        )
        source = offline_model.stream(messages, tools, calls, length, rate)
    elif path == "openai":
        source = _openai(settings, model, messages, options, tools, calls, meter)
    else:
        source = _litellm(settings, model, messages, options, tools, calls, meter)
    async with contextlib.aclosing(source):  # type: ignore[type-var]
        async for text in source:
            meter.chunks += 1
            yield text


def _retrying(settings: Settings, retry: Any) -> AsyncRetrying:
    return AsyncRetrying(
        stop=stop_after_attempt(max(1, settings.llm_retries)),
        wait=wait_exponential(multiplier=0.2, max=5),
        retry=retry,
        reraise=True,
    )


def _max_tokens(settings: Settings, options: dict[str, Any]) -> int | None:
    caps = [int(c) for c in (options.get("max_tokens"), settings.max_reply_tokens) if c]
    return min(caps) if caps else None


async def _openai(
    settings: Settings,
    model: str,
    messages: list[dict[str, Any]],
    options: dict[str, Any],
    tools: list[dict[str, Any]] | None,
    calls: list[ToolRequest] | None,
    meter: Meter,
) -> AsyncIterator[str]:
    """The lean path: one streamed POST to `{LLM_API_BASE}/chat/completions`, parsed by hand."""
    provider, _, name = model.partition("/")
    body: dict[str, Any] = {
        "model": name,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if tools:
        body["tools"] = tools
    if (cap := _max_tokens(settings, options)) is not None:
        body["max_tokens"] = cap
    key = settings.llm_api_key.get_secret_value() or os.environ.get(OPENAI_COMPATIBLE[provider], "")
    url = settings.llm_api_base.rstrip("/") + "/chat/completions"
    async for attempt in _retrying(settings, retry_if_exception(openai_stream.retryable)):
        with attempt:
            stream = openai_stream.Stream(url, body, key)
            events = stream.events()
            try:
                await stream.open()
                event = await anext(events, None)
            except BaseException:
                await events.aclose()
                await stream.close()
                raise
    finished = False
    try:
        while event is not None and not finished:
            meter.report(event.get("usage"))
            choices = event.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta") or {}
                if content := delta.get("content"):
                    yield content
                if calls is not None and delta.get("tool_calls"):
                    _collect(calls, delta["tool_calls"])
                finished = bool(choice.get("finish_reason"))
            if not finished:
                event = await anext(events, None)
        if finished:  # the trailer: the usage chunk and [DONE], so the connection can be reused
            with contextlib.suppress(Exception):
                async with asyncio.timeout(TRAILER_SECONDS):
                    async for event in events:
                        meter.report(event.get("usage"))
    finally:
        await events.aclose()
        await stream.close()


async def _litellm(
    settings: Settings,
    model: str,
    messages: list[dict[str, Any]],
    options: dict[str, Any],
    tools: list[dict[str, Any]] | None,
    calls: list[ToolRequest] | None,
    meter: Meter,
) -> AsyncIterator[str]:
    """Every other provider, through litellm (waits for its import if it is still loading)."""
    litellm = await litellm_module()
    kwargs: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if tools:
        kwargs["tools"] = tools
    if _streams_usage(litellm, model):
        kwargs["stream_options"] = {"include_usage": True}
    if (cap := _max_tokens(settings, options)) is not None:
        kwargs["max_tokens"] = cap
    kwargs["max_retries"] = 0  # the provider SDK's own retries would multiply ours
    if settings.llm_api_base:
        kwargs["api_base"] = settings.llm_api_base
    if settings.llm_api_key.get_secret_value():
        kwargs["api_key"] = settings.llm_api_key.get_secret_value()
    async for attempt in _retrying(settings, retry_if_exception_type(transient_errors(litellm))):
        with attempt:
            response = await litellm.acompletion(**kwargs)
            chunks = response.__aiter__()
            chunk = await anext(chunks, None)
    finished = False
    try:
        while chunk is not None:
            meter.report(getattr(chunk, "usage", None))
            choice = chunk.choices[0] if chunk.choices else None
            if choice is not None:
                if choice.delta.content:
                    yield choice.delta.content
                if calls is not None and getattr(choice.delta, "tool_calls", None):
                    _collect(calls, choice.delta.tool_calls)
                if choice.finish_reason:
                    break
            chunk = await anext(chunks, None)
        finished = True
    finally:
        await _release(response, drain=finished, meter=meter)


def _field(item: Any, name: str) -> Any:
    """`name` of a streamed delta: a dict on the lean path, an object from litellm."""
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _collect(calls: list[ToolRequest], deltas: list[Any]) -> None:
    """Fold streamed tool-call deltas into whole calls: the first delta of an index names it, later ones
    append to its arguments."""
    for delta in deltas:
        index = _field(delta, "index")
        index = len(calls) if index is None else int(index)
        while len(calls) <= index:
            calls.append(ToolRequest())
        call = calls[index]
        call.id = call.id or (_field(delta, "id") or "")
        function = _field(delta, "function")
        if function is not None:
            call.name = call.name or (_field(function, "name") or "")
            call.arguments += _field(function, "arguments") or ""


async def _release(response: Any, *, drain: bool, meter: Meter) -> None:
    """End a stream at its finish reason, skipping litellm's end-of-stream work.

    Reading the wrapper to its end makes litellm rebuild the whole response from every chunk
    for usage and cost logging (`stream_chunk_builder`, a few ms of CPU per reply) that
    relaygate does not use. The provider's own trailer (a usage chunk, `[DONE]`) is still read,
    briefly, so its HTTP connection goes back to the pool and its usage reaches `meter`; an
    abandoned stream is closed.
    """
    rest: Any = getattr(response, "completion_stream", None)
    if drain and hasattr(rest, "__aiter__"):
        with contextlib.suppress(Exception):
            async with asyncio.timeout(TRAILER_SECONDS):
                async for raw in rest:
                    meter.report(raw.get("usage") if isinstance(raw, dict) else getattr(raw, "usage", None))
    await response.aclose()
