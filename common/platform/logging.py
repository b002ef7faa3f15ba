"""One JSON object per line, with the correlation id carried through request, job and stream.

`LOG_FORMAT=text` gives one readable line per record instead (what `relaygate dev` shows).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson
from opentelemetry import trace

correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
session_id: contextvars.ContextVar[str] = contextvars.ContextVar("session_id", default="")
tenant_id: contextvars.ContextVar[str] = contextvars.ContextVar("tenant_id", default="")
_IDS = (("request_id", request_id), ("session_id", session_id), ("tenant_id", tenant_id))


def bind(*, request: str = "", session: str = "", tenant: str = "", correlation: str = "") -> None:
    """Put these ids on every later log line of the current task (the ones given non-empty)."""
    for var, value in (
        (request_id, request),
        (session_id, session),
        (tenant_id, tenant),
        (correlation_id, correlation),
    ):
        if value:
            var.set(value)


_RESERVED = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "correlation_id": correlation_id.get(),
        }
        for key, var in _IDS:
            if value := var.get():
                entry[key] = value
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`HH:MM:SS level logger: message key=value ...`: the JSON fields, for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _RESERVED and not key.startswith("_") and key != "color_message"
        )
        line = (
            f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname.lower():7} "
            f"{record.name}: {record.getMessage()}{' ' + extra if extra else ''}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for noisy in ("httpx", "httpcore", "LiteLLM", "litellm", "arq.jobs", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
