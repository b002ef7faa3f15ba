"""Cross-origin access for browser UIs on other origins (Starlette's CORSMiddleware)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from common.platform.settings import Settings

# Response headers a script on another origin may read (the rest stay hidden by the browser).
EXPOSED_HEADERS = [
    "Location",
    "Content-Location",
    "Retry-After",
    "x-correlation-id",
    "x-vercel-ai-ui-message-stream",
    "X-Session-Id",
    "Idempotent-Replayed",
    "Preference-Applied",
]


def install(app: FastAPI, settings: Settings) -> None:
    """Answer preflights and add CORS headers when origins are configured; without any, browsers get none.

    Credentials travel in headers (`Authorization`, `x-api-key`), never cookies, so any request
    header is allowed and credentialed (cookie) requests are not.
    """
    origins, regex = settings.cors_origins(), settings.cors_allow_origin_regex or None
    if not origins and not regex:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_origin_regex=regex,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
