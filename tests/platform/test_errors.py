"""Errors of the backing stores become a clear 503, never a 500 or a stack trace."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI
from redis.exceptions import ClusterDownError, ConnectionError, SlotNotCoveredError

from api import errors
from api.main import create_app
from common.platform.outages import STORE_ERRORS
from tests.conftest import ROOT


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionError("refused"),
        ClusterDownError("CLUSTERDOWN"),
        SlotNotCoveredError('Slot "12" is not covered by the cluster.'),
    ],
)
async def test_stream_store_errors_answer_503(exc: Exception) -> None:
    r = await _answer(exc)
    assert r.status_code == 503
    assert r.json() == {"error": "service_unavailable", "detail": "the stream store is unavailable; retry shortly"}
    assert r.headers["retry-after"] == "2"


@pytest.mark.parametrize("exc", [cls("unavailable") for cls in STORE_ERRORS if cls is not OSError] + [OSError("down")])
async def test_every_store_error_answers_503(exc: Exception) -> None:
    """The one list of store errors (common.platform.outages.STORE_ERRORS) is the list the gateway answers 503 for."""
    assert (await _answer(exc)).status_code == 503


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (errors.BadRequest("x"), 400, "bad_request"),
        (errors.Unauthorized("x"), 401, "unauthorized"),
        (errors.Forbidden("x"), 403, "forbidden"),
        (errors.PolicyRefused("x"), 403, "policy_violation"),
        (errors.NotFound("x"), 404, "not_found"),
        (errors.Conflict("x"), 409, "conflict"),
        (errors.Invalid("x"), 422, "validation_error"),
        (errors.LimitExceeded("x"), 422, "limit_exceeded"),
        (errors.TooManyRequests("x"), 429, "rate_limited"),
        (errors.ServiceUnavailable("x"), 503, "service_unavailable"),
    ],
)
async def test_named_errors_keep_the_wire_format(exc: errors.ApiError, status: int, code: str) -> None:
    r = await _answer(exc)
    assert (r.status_code, r.json()) == (status, {"error": code, "detail": "x"})
    assert ("www-authenticate" in r.headers) == (status == 401)


def test_routes_declare_their_error_responses() -> None:
    schema = create_app().openapi()
    declared = schema["paths"]["/api/v1/sessions/{session_id}"]["get"]["responses"]
    assert {"401", "403", "404", "503"} <= declared.keys()
    assert declared["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_no_bare_status_raises_left() -> None:
    """Refusals name their class (api/errors.py); a bare `ApiError(<status>, ...)` is the untyped form."""
    bare = [
        f"{path}:{n}"
        for path in (ROOT / "api").rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bApiError\(\d", line)
    ]
    assert bare == []


async def _answer(exc: Exception) -> httpx.Response:
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/boom")
