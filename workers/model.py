"""Model calls through litellm: the configured model or the built-in offline one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import litellm
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from common.agents import Agent
from common.models import model_options
from common.redact import scrub
from common.settings import Settings
from workers import offline_model

TRANSIENT: tuple[type[Exception], ...] = (
    litellm.exceptions.APIConnectionError,
    litellm.exceptions.RateLimitError,
    litellm.exceptions.ServiceUnavailableError,
    litellm.exceptions.InternalServerError,
    litellm.exceptions.Timeout,
)


def configure(settings: Settings) -> None:
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
    offline_model.register(settings.offline_model_tokens, settings.offline_model_tokens_per_second)


def model_for(agent: Agent, settings: Settings) -> str:
    return agent.model or settings.llm_model or offline_model.MODEL


def describe_error(exc: BaseException) -> str:
    """A short, readable reason for clients: truncated, scrubbed of URLs and keys, never a traceback."""
    message = scrub(" ".join(str(exc).split()))
    name = type(exc).__name__
    return f"model provider error ({name}): {message[:300]}" if message else f"model provider error ({name})"


async def stream_reply(
    settings: Settings, model: str, messages: list[dict[str, str]], metadata: dict[str, Any]
) -> AsyncIterator[str]:
    """Yields text chunks. Transient failures before the first chunk are retried with backoff."""
    options = model_options(metadata)
    kwargs: dict[str, Any] = {"model": model, "messages": messages, "stream": True,
                              "metadata": {k: v for k, v in options.items() if k == "offline"}}
    if not model.startswith(offline_model.PROVIDER):
        caps = [int(c) for c in (options.get("max_tokens"), settings.max_reply_tokens) if c]
        if caps:
            kwargs["max_tokens"] = min(caps)
        kwargs["max_retries"] = 0  # the provider SDK's own retries would multiply ours
        if settings.llm_api_base:
            kwargs["api_base"] = settings.llm_api_base
        if settings.llm_api_key.get_secret_value():
            kwargs["api_key"] = settings.llm_api_key.get_secret_value()
    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, settings.llm_retries)),
        wait=wait_exponential(multiplier=0.2, max=5),
        retry=retry_if_exception_type(TRANSIENT),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            response = await litellm.acompletion(**kwargs)
            chunks = response.__aiter__()
            first = await anext(chunks, None)
    if first is None:
        return
    text = first.choices[0].delta.content if first.choices else None
    if text:
        yield text
    async for chunk in chunks:
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            yield text
