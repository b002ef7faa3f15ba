"""LangGraph's error shape for the `/langgraph` routes: `{"detail": message}` with the status the SDK maps to its
exception types (404 NotFoundError, 409 ConflictError, 429 RateLimitError with Retry-After, ...)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError
from api.responses import JSONResponse


def _message(detail: object) -> str:
    if isinstance(detail, list):
        return "; ".join(_message(d) for d in detail)
    if isinstance(detail, dict):
        return f"{detail.get('field')}: {detail.get('message')}" if "field" in detail else str(detail)
    return str(detail)


def problem(status: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": _message(detail)}, status_code=status, headers=headers or None)


class LangGraphRoute(APIRoute):
    """Renders relaygate's errors (auth, scopes, limits, validation) the way LangGraph's server does."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                headers = {"WWW-Authenticate": "Bearer", **exc.headers} if exc.status == 401 else exc.headers
                return problem(exc.status, exc.detail, headers)
            except RequestValidationError as exc:
                fields = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
                return problem(422, fields)

        return handle
