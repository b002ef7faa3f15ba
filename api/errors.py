"""Every error is JSON `{"error", "detail"}` with the right status; never a stack trace."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.responses import JSONResponse
from common.platform.outages import POSTGRES_ERRORS, REDIS_ERRORS
from common.requests.limits import Refusal

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    503: "service_unavailable",
}

# A message, a list of messages, or one {"field", "message"} per invalid field.
Detail = str | list[str] | list[dict[str, str]]


class ApiError(Exception):
    """A refusal the client can act on, answered as `{"error", "detail"}` with `status`; raise a subclass."""

    status: ClassVar[int] = 500
    error: str = "error"

    def __init__(self, detail: Detail, *, error: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.error = error or type(self).error
        self.headers = headers or {}


class BadRequest(ApiError):
    """The request is malformed."""

    status, error = 400, "bad_request"


class Unauthorized(ApiError):
    """No valid credential."""

    status, error = 401, "unauthorized"


class Forbidden(ApiError):
    """The credential may not do this."""

    status, error = 403, "forbidden"


class PolicyRefused(Forbidden):
    """A flow policy refuses the run."""

    error = "policy_violation"


class NotFound(ApiError):
    """No such resource for this tenant."""

    status, error = 404, "not_found"


class Conflict(ApiError):
    """The resource's state does not allow this now."""

    status, error = 409, "conflict"


class Invalid(ApiError):
    """A well-formed request with a value relaygate cannot accept."""

    status, error = 422, "validation_error"


class LimitExceeded(Invalid):
    """The content is over a configured size limit."""

    error = "limit_exceeded"


class TooManyRequests(ApiError):
    """A rate or concurrency limit; Retry-After says when to try again."""

    status, error = 429, "rate_limited"


class ServiceUnavailable(ApiError):
    """A store or this gateway cannot serve now; Retry-After says when to try again."""

    status, error = 503, "service_unavailable"


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str
    detail: Detail


def responses(*errors: type[ApiError], signed_in: bool = True) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses=` of a router whose routes raise `errors`: one entry per status, plus 503 (every
    route needs a store) and, for `signed_in` routes, 401 and 403."""
    common = (Unauthorized, Forbidden, ServiceUnavailable) if signed_in else (ServiceUnavailable,)
    declared: dict[int | str, dict[str, Any]] = {}
    for error in (*errors, *common):
        entry = declared.setdefault(error.status, {"model": ErrorBody, "description": ""})
        if error.__doc__ and error.__doc__ not in entry["description"]:
            entry["description"] = f"{entry['description']} {error.__doc__}".strip()
    return declared


def refused(refusal: Refusal) -> ApiError:
    """429 naming the limit, with Retry-After."""
    return TooManyRequests(refusal.detail, headers={"Retry-After": str(refusal.retry_after)})


def error_response(status: int, error: str, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer", **exc.headers} if exc.status == 401 else exc.headers
        return error_response(exc.status, exc.error, exc.detail, headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, _CODES.get(exc.status_code, "error"), exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]} for err in exc.errors()]
        return error_response(422, "validation_error", fields)

    @app.exception_handler(asyncpg.DataError)
    async def _bad_data(_: Request, exc: Exception) -> JSONResponse:
        log.warning("input the database refused", extra={"error": type(exc).__name__})
        return error_response(422, "validation_error", "the request holds a value the database cannot store")

    async def _db_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable", extra={"error": repr(exc)})
        return error_response(
            503, "service_unavailable", "the database is unavailable; retry shortly", {"Retry-After": "2"}
        )

    async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable", extra={"error": repr(exc)})
        return error_response(
            503, "service_unavailable", "the stream store is unavailable; retry shortly", {"Retry-After": "2"}
        )

    for error in POSTGRES_ERRORS:
        app.add_exception_handler(error, _db_down)
    for error in REDIS_ERRORS:
        app.add_exception_handler(error, _redis_down)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "an unexpected error occurred")
