"""Every error is JSON `{"error", "detail"}` with the right status; never a stack trace."""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisClusterException, RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.responses import JSONResponse
from common.limits import Refusal

log = logging.getLogger(__name__)

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "payload_too_large", 422: "validation_error", 429: "rate_limited",
          503: "service_unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, detail: str | list[str] | list[dict[str, str]], error: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.detail = detail
        self.error = error or _CODES.get(status, "error")
        self.headers = headers or {}


def refused(refusal: Refusal) -> ApiError:
    """429 naming the limit, with Retry-After."""
    return ApiError(429, refusal.detail, headers={"Retry-After": str(refusal.retry_after)})


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
        fields = [
            {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]} for err in exc.errors()
        ]
        return error_response(422, "validation_error", fields)

    @app.exception_handler(asyncpg.DataError)
    async def _bad_data(_: Request, exc: Exception) -> JSONResponse:
        log.warning("input the database refused", extra={"error": type(exc).__name__})
        return error_response(422, "validation_error", "the request holds a value the database cannot store")

    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.CannotConnectNowError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(OSError)  # asyncpg's refused or reset connections
    async def _db_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable", extra={"error": repr(exc)})
        return error_response(503, "service_unavailable", "the database is unavailable; retry shortly",
                              {"Retry-After": "2"})

    @app.exception_handler(RedisError)
    @app.exception_handler(RedisClusterException)  # e.g. a slot no node covers: not a RedisError
    async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable", extra={"error": repr(exc)})
        return error_response(503, "service_unavailable", "the stream store is unavailable; retry shortly",
                              {"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "an unexpected error occurred")
