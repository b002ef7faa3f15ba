"""The LangGraph Agent Protocol under `/langgraph`: what the `langgraph-sdk` clients and `useStream` call.

`get_client(url=BASE + "/langgraph", api_key=KEY)` works as against a LangGraph server. Errors are
LangGraph's `{"detail": ...}`; reconnect paths (`Location`) are relative to that base URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Depends, Header, Query, Response
from starlette.responses import StreamingResponse

from api.deps import Gateway, GatewayDep, PrincipalDep, require_scope
from api.errors import Invalid
from api.langgraph import resources, service
from api.langgraph.errors import LangGraphRoute
from api.langgraph.events import Renderer, frames, metadata
from api.langgraph.relay import outcome_body, run_frames
from api.langgraph.schemas import AssistantSearch, HistoryQuery, RunCreate, StreamMode, ThreadCreate, ThreadSearch
from api.responses import JSONResponse
from api.streams.relay import check_resume
from api.streams.sse import SSE_HEADERS, held_response, just_before, release_stream, reserve_stream, resume_point
from common.platform.credentials import SCOPE_REQUESTS, SCOPE_SESSIONS
from common.platform.keys import stream_key
from common.platform.metrics import PROTOCOL_STREAMS
from common.requests.models import ACTIVE_STATUSES
from common.streams.protocol import parse_id

router = APIRouter(prefix="/langgraph", tags=["langgraph"], route_class=LangGraphRoute)

_THREADS = [Depends(require_scope(SCOPE_SESSIONS))]
_RUNS = [Depends(require_scope(SCOPE_REQUESTS))]
_MODES = frozenset(get_args(StreamMode))
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)]


@router.get("/info")
async def info(_: PrincipalDep) -> dict[str, Any]:
    return {"version": "relaygate", "flags": {"assistants": True, "crons": False, "langsmith": False}}


@router.post("/assistants/search", dependencies=_RUNS)
async def search_assistants(body: AssistantSearch, gw: GatewayDep, _: PrincipalDep) -> list[dict[str, Any]]:
    return service.search_assistants(gw, body)


@router.get("/assistants/{assistant_id}", dependencies=_RUNS)
async def get_assistant(assistant_id: str, gw: GatewayDep, _: PrincipalDep) -> dict[str, Any]:
    return resources.assistant(service.agent(gw, assistant_id))


@router.post("/threads", dependencies=_THREADS)
async def create_thread(body: ThreadCreate, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    return await service.create_thread(gw, who, body)


@router.post("/threads/search", dependencies=_THREADS)
async def search_threads(body: ThreadSearch, gw: GatewayDep, who: PrincipalDep) -> list[dict[str, Any]]:
    return await service.search_threads(gw, who, body)


@router.get("/threads/{thread_id}", dependencies=_THREADS)
async def get_thread(thread_id: str, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    return await service.thread(gw, who, thread_id)


@router.delete("/threads/{thread_id}", status_code=204, dependencies=_THREADS)
async def delete_thread(thread_id: str, gw: GatewayDep, who: PrincipalDep) -> Response:
    await service.delete_thread(gw, who, thread_id)
    return Response(status_code=204)


@router.get("/threads/{thread_id}/state", dependencies=_THREADS)
async def thread_state(thread_id: str, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    return await service.state(gw, who, thread_id)


@router.post("/threads/{thread_id}/history", dependencies=_THREADS)
async def thread_history(thread_id: str, body: HistoryQuery, gw: GatewayDep, who: PrincipalDep) -> list[dict[str, Any]]:
    """Only the latest state: relaygate keeps a conversation, not LangGraph's checkpoints."""
    return [await service.state(gw, who, thread_id)]


def _sse(gw: Gateway, slot: str | None, body: AsyncIterator[bytes], location: str) -> StreamingResponse:
    response = held_response(gw, slot, body)
    response.headers["Location"] = f"{location}/stream"
    response.headers["Content-Location"] = location
    return response


async def _released(gw: Gateway, slot: str | None, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in body:
            yield chunk
    finally:
        release_stream(gw, slot)


def _waiting(gw: Gateway, slot: str | None, body: AsyncIterator[bytes], location: str) -> StreamingResponse:
    """A JSON body held open until the run ends; `Location` is where the SDK asks again if it is cut."""
    return StreamingResponse(
        _released(gw, slot, body),
        media_type="application/json",
        headers={**SSE_HEADERS, "Location": f"{location}/join", "Content-Location": location},
    )


@router.post("/threads/{thread_id}/runs", dependencies=_RUNS)
async def create_run(thread_id: str, body: RunCreate, gw: GatewayDep, who: PrincipalDep) -> JSONResponse:
    started = await service.start_run(gw, who, thread_id, body, via="background")
    row = await service.owned_run(gw, who, started.view.thread_id, started.view.run_id)
    return JSONResponse(resources.run(row), headers={"Content-Location": started.location})


@router.post("/threads/{thread_id}/runs/stream", response_class=StreamingResponse, dependencies=_RUNS)
async def stream_run(thread_id: str, body: RunCreate, gw: GatewayDep, who: PrincipalDep) -> StreamingResponse:
    """Create a run and stream it; `Location` is where the SDK reconnects with `Last-Event-ID`."""
    slot = await reserve_stream(gw, who)
    try:
        started = await service.start_run(gw, who, thread_id, body, via="stream")
    except BaseException:
        release_stream(gw, slot)
        raise
    PROTOCOL_STREAMS.labels("langgraph", "opened", "new").inc()
    key = stream_key(started.view.thread_id, gw.settings.stream_buckets)
    after = just_before(started.entry_id) if started.entry_id else (0, 0)
    body_frames = run_frames(gw.hub, key, after, (0, 0), Renderer(started.view), metadata_first=False)
    return _sse(gw, slot, body_frames, started.location)


@router.post("/threads/{thread_id}/runs/wait", dependencies=_RUNS)
async def wait_run(thread_id: str, body: RunCreate, gw: GatewayDep, who: PrincipalDep) -> StreamingResponse:
    """Create a run and answer the thread's values once it has ended (or its error as `__error__`)."""
    slot = await reserve_stream(gw, who)
    try:
        started = await service.start_run(gw, who, thread_id, body, via="wait")
    except BaseException:
        release_stream(gw, slot)
        raise
    view = started.view
    key = stream_key(view.thread_id, gw.settings.stream_buckets)
    after = just_before(started.entry_id) if started.entry_id else (0, 0)

    async def result() -> dict[str, Any]:
        return await service.outcome(gw, who, view.thread_id, view.run_id)

    return _waiting(gw, slot, outcome_body(gw.hub, key, after, view.run_id, result), started.location)


@router.get("/threads/{thread_id}/runs", dependencies=_RUNS)
async def list_runs(
    thread_id: str,
    gw: GatewayDep,
    who: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: Annotated[str | None, Query(max_length=20)] = None,
) -> list[dict[str, Any]]:
    runs = [resources.run(t) for t in reversed(await service.runs_of(gw, who, thread_id))]
    return [r for r in runs if status in (None, r["status"])][offset : offset + limit]


@router.get("/threads/{thread_id}/runs/{run_id}", dependencies=_RUNS)
async def get_run(thread_id: str, run_id: str, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    return resources.run(await service.owned_run(gw, who, thread_id, run_id))


@router.get("/threads/{thread_id}/runs/{run_id}/join", dependencies=_RUNS)
async def join_run(thread_id: str, run_id: str, gw: GatewayDep, who: PrincipalDep) -> Response:
    """The thread's values once the run has ended (at once if it has)."""
    row = await service.owned_run(gw, who, thread_id, run_id)
    if row["status"] not in ACTIVE_STATUSES or not row["stream_entry_id"]:
        return JSONResponse(await service.outcome(gw, who, thread_id, run_id))
    slot = await reserve_stream(gw, who)
    key = stream_key(row["session_id"], gw.settings.stream_buckets)

    async def result() -> dict[str, Any]:
        return await service.outcome(gw, who, thread_id, run_id)

    body = outcome_body(gw.hub, key, just_before(row["stream_entry_id"]), run_id, result)
    return _waiting(gw, slot, body, f"/threads/{row['session_id']}/runs/{run_id}")


def _modes(stream_mode: list[str] | None) -> list[StreamMode] | None:
    chosen = [m for m in stream_mode or [] if m]
    unknown = [m for m in chosen if m not in _MODES]
    if unknown:
        raise Invalid(f"unknown stream_mode {unknown[0][:32]!r}")
    return chosen or None  # type: ignore[return-value]


def _resume(last_event_id: str | None) -> tuple[int, int] | None:
    """None: no Last-Event-ID (live from now); `-1` or empty: from the run's start; else after that entry."""
    if last_event_id is None:
        return None
    if last_event_id.strip() in ("", "-1"):
        return (0, 0)
    return resume_point(last_event_id)


@router.get("/threads/{thread_id}/runs/{run_id}/stream", response_class=StreamingResponse, dependencies=_RUNS)
async def join_stream(
    thread_id: str,
    run_id: str,
    gw: GatewayDep,
    who: PrincipalDep,
    last_event_id: LastEventId = None,
    stream_mode: Annotated[list[str] | None, Query(max_length=20)] = None,
) -> StreamingResponse:
    """Join a run: live from now, or after `Last-Event-ID` (`-1`: from its start), ending with `end`."""
    row = await service.owned_run(gw, who, thread_id, run_id)
    view = service.view_of(gw, who, row, _modes(stream_mode))
    resume = _resume(last_event_id)
    slot = await reserve_stream(gw, who)
    PROTOCOL_STREAMS.labels("langgraph", "opened", "join" if resume is None else "resume").inc()
    key = stream_key(row["session_id"], gw.settings.stream_buckets)
    first = just_before(row["stream_entry_id"]) if row["stream_entry_id"] else (0, 0)
    finished = row["status"] not in ACTIVE_STATUSES

    async def body() -> AsyncIterator[bytes]:
        after, skip_until = first, resume
        if skip_until is None:
            skip_until = parse_id(await gw.hub.last_id(key))
        reset = await check_resume(gw.streams, key, first)
        if reset is not None and finished:
            # The run's entries are gone (expired or trimmed): its outcome from Postgres.
            opening = [metadata(view.run_id)] if resume is None or resume <= first else []
            yield frames([*opening, *await service.final_events(gw, who, row, view)], None)
            return
        if reset is not None:
            after = reset.resume_from
        async for chunk in run_frames(gw.hub, key, after, skip_until, Renderer(view), metadata_first=resume is None):
            yield chunk

    return _sse(gw, slot, body(), f"/threads/{row['session_id']}/runs/{run_id}")


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", dependencies=_RUNS)
async def cancel_run(
    thread_id: str,
    run_id: str,
    gw: GatewayDep,
    who: PrincipalDep,
    wait: Annotated[int, Query(ge=0, le=1)] = 0,
    action: Annotated[str, Query(max_length=20)] = "interrupt",
) -> dict[str, Any]:
    """Stop the run: it ends `interrupted` (its stream with `end`, no error)."""
    if action != "interrupt":
        raise Invalid(f"cancel action {action[:20]!r} is not supported; use interrupt")
    return await service.cancel_run(gw, who, thread_id, run_id, wait=bool(wait))
