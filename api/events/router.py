"""`POST /api/v1/events/cloudevents`: CloudEvents 1.0 (structured or binary HTTP mode) start requests and runs."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat
from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from api.deps import Gateway, GatewayDep, PrincipalDep, require_scope
from api.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    responses,
)
from api.flows.runs import service as runs
from api.flows.runs.contract import ContractRoute
from api.flows.runs.schemas import RunBody
from api.requests import service as requests
from api.requests.schemas import GenericRequest
from api.responses import JSONResponse
from common.platform.credentials import SCOPE_REQUESTS, SCOPE_RUNS, Principal
from common.platform.logging import correlation_id
from common.requests import repository as request_repo

# Each event type needs its own scope (checked per event); a credential with neither gets no further.
router = APIRouter(
    prefix="/api/v1/events",
    tags=["events"],
    route_class=ContractRoute,
    dependencies=[Depends(require_scope(SCOPE_REQUESTS, SCOPE_RUNS))],
    responses=responses(BadRequest, NotFound, Conflict, TooManyRequests),
)

REQUEST_CREATED = "com.relaygate.request.created"
RUN_REQUESTED = "com.relaygate.run.requested"
REQUIRED = ("specversion", "id", "source", "type")


def parse(headers: dict[str, str], body: bytes) -> BaseCloudEvent:
    """Binary mode when `ce-*` headers are present, structured (`application/cloudevents+json`) otherwise.

    The SDK fills in a missing `id` (and `time`) when it builds an event; an incoming event must carry
    every required attribute itself, so they are checked first.
    """
    if any(name.startswith("ce-") for name in headers):
        present: set[str] = {name.removeprefix("ce-") for name in headers if name.startswith("ce-")}
    else:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("not a valid CloudEvent: the body is not JSON") from None
        present = set(document) if isinstance(document, dict) else set()
    missing = [name for name in REQUIRED if name not in present]
    if missing:
        raise BadRequest(f"not a valid CloudEvent: missing {', '.join(missing)}")
    try:
        return from_http(HTTPMessage(headers=headers, body=body), JSONFormat())
    except Exception as exc:  # the SDK raises validation, value and JSON errors alike
        message = " ".join(str(exc).split())[:500] or type(exc).__name__
        raise BadRequest(f"not a valid CloudEvent: {message}") from None


def _data(event: BaseCloudEvent) -> dict[str, Any]:
    data = event.get_data()
    if not isinstance(data, dict):
        raise BadRequest(f"{event.get_type()} needs a JSON object as data")
    return data


def _problems(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": "data." + ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]


async def _request(gw: Gateway, who: Principal, event: BaseCloudEvent) -> JSONResponse:
    try:
        body = GenericRequest.model_validate({"integration_type": "generic", **_data(event)})
    except ValidationError as exc:
        raise BadRequest(_problems(exc)) from None
    # The event's (source, id) is its identity: a redelivered event replays the same request.
    key = "ce:" + hashlib.sha256(f"{event.get_source()}\n{event.get_id()}".encode()).hexdigest()
    accepted = await requests.accept(gw, who, body, idempotency_key=key, correlation_id=correlation_id.get())
    await request_repo.set_cloudevent(gw.db, who.tenant_id, accepted.request_id, event.get_id(), event.get_type())
    return JSONResponse(
        {
            "request_id": accepted.request_id,
            "session_id": accepted.session_id,
            "status": accepted.status,
            "stream_url": f"/api/v1/sessions/{accepted.session_id}/stream",
            "stream_entry_id": accepted.stream_entry_id,
        },
        status_code=202,
    )


async def _run(gw: Gateway, who: Principal, event: BaseCloudEvent) -> JSONResponse:
    data = {"tenant_id": who.tenant_id, "request_id": f"ce:{event.get_source()}:{event.get_id()}"[:255], **_data(event)}
    try:
        body = RunBody.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_problems(exc)) from None
    started = await runs.start(
        gw,
        who,
        body,
        correlation_id=correlation_id.get(),
        trigger={"via": "cloudevents", "id": event.get_id(), "source": event.get_source()},
    )
    return JSONResponse({"run_id": started.run_id, "correlation_id": started.correlation_id}, status_code=202)


@router.post("/cloudevents", status_code=202)
async def receive(request: Request, gw: GatewayDep, who: PrincipalDep) -> JSONResponse:
    """`com.relaygate.request.created` starts a request; `com.relaygate.run.requested` a flow run."""
    event = parse(dict(request.headers), await request.body())
    kind = event.get_type()
    scope = {REQUEST_CREATED: SCOPE_REQUESTS, RUN_REQUESTED: SCOPE_RUNS}.get(kind)
    if scope is not None and not who.allows(scope):
        raise Forbidden(f"this credential lacks the {scope!r} scope")
    if kind == REQUEST_CREATED:
        return await _request(gw, who, event)
    if kind == RUN_REQUESTED:
        return await _run(gw, who, event)
    raise BadRequest(f"unsupported CloudEvent type {kind!r}: send {REQUEST_CREATED} or {RUN_REQUESTED}")
