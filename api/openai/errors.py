"""Errors of the OpenAI routes in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.

relaygate's own handlers decide the status and message (so both APIs agree on them); this route
class renders the result the way the `openai` SDKs read it, with 400 where FastAPI says 422.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from api.responses import JSONResponse

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_CODES = {
    "unauthorized": "invalid_api_key",
    "validation_error": "invalid_request",
    "rate_limited": "rate_limit_exceeded",
}
_KEPT_HEADERS = ("retry-after", "www-authenticate", "x-should-retry")


def error_body(message: str, status: int, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def _message(detail: Any) -> tuple[str, str | None]:
    """A readable message, and the field a validation error is about (as OpenAI's `param`)."""
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        fields = [str(d.get("field", "")).removeprefix("body.") for d in detail]
        return "; ".join(
            f"{f}: {d.get('message', '')}" if f else str(d.get("message", ""))
            for f, d in zip(fields, detail, strict=True)
        ), fields[0] or None
    return str(detail), None


def in_openai_shape(response: Response) -> Response:
    """Re-render relaygate's `{"error", "detail"}` response; a 422 becomes a 400."""
    try:
        body = orjson.loads(bytes(response.body))
    except orjson.JSONDecodeError:
        return response
    if not isinstance(body, dict):
        return response
    status = 400 if response.status_code == 422 else response.status_code
    message, param = _message(body.get("detail", ""))
    code = str(body.get("error") or "") or None
    headers = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
    return JSONResponse(
        error_body(message, status, _CODES.get(code or "", code), param), status_code=status, headers=headers
    )


class OpenAIRoute(APIRoute):
    """Every error of the route (auth, validation, limits, stores) leaves in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                render = next(
                    (
                        request.app.exception_handlers[cls]
                        for cls in type(exc).__mro__
                        if cls in request.app.exception_handlers
                    ),
                    None,
                )
                if render is None:
                    raise
                return in_openai_shape(await render(request, exc))

        return handle
