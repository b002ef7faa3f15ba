"""Threads are sessions, runs are requests, assistants are agents: each run goes through the one intake."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import ValidationError

from api.deps import Gateway
from api.errors import ApiError, Conflict, Invalid, NotFound
from api.langgraph import resources
from api.langgraph.events import LgEvent, RunView, failure
from api.langgraph.messages import ai, ai_id, conversation, human_of, user_turn
from api.langgraph.schemas import AssistantSearch, LangGraphRequest, RunCreate, StreamMode, ThreadCreate, ThreadSearch
from api.requests import service as request_service
from api.streams.relay import wait_for_result
from api.streams.sse import just_before
from common.agents.registry import Agent
from common.platform import sink
from common.platform.credentials import Principal
from common.platform.ids import parse_uuid
from common.platform.keys import stream_key
from common.platform.logging import correlation_id
from common.platform.metrics import PROTOCOL_REQUESTS
from common.requests import repository as request_repo
from common.requests.cancelling import cancel_many
from common.requests.models import ACTIVE_STATUSES
from common.sessions import repository as session_repo

THREAD_TURNS = 200  # the most turns a thread's state shows
CANCEL_WAIT_SECONDS = 10.0


def agent(gw: Gateway, assistant_id: str) -> Agent:
    found = gw.agents.get(assistant_id)
    if found is None:
        raise NotFound(f"assistant {assistant_id[:64]!r} not found")
    return found


def search_assistants(gw: Gateway, body: AssistantSearch) -> list[dict[str, Any]]:
    found = [
        resources.assistant(a) for a in gw.agents.agents if body.graph_id in (None, a.id) and body.name in (None, a.id)
    ]
    found = [a for a in found if body.metadata.items() <= a["metadata"].items()]
    return found[body.offset : body.offset + body.limit]


async def owned_thread(gw: Gateway, who: Principal, thread_id: str) -> dict[str, Any]:
    """The caller's session; another user's, an archived (deleted) one and a malformed id are all a 404."""
    session = await session_repo.get(gw.db, who, thread_id)
    if session is None or session["status"] == "archived":
        raise NotFound("thread not found")
    return session


async def _turns(gw: Gateway, who: Principal, session_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    by_session: dict[str, list[dict[str, Any]]] = {sid: [] for sid in session_ids}
    for turn in await request_repo.turns_of(gw.db, who, session_ids, THREAD_TURNS):
        by_session[turn["session_id"]].append(turn)
    return by_session


async def thread(gw: Gateway, who: Principal, thread_id: str) -> dict[str, Any]:
    session = await owned_thread(gw, who, thread_id)
    turns = (await _turns(gw, who, [session["session_id"]]))[session["session_id"]]
    return resources.thread(session, resources.thread_status(turns), turns)


async def state(gw: Gateway, who: Principal, thread_id: str) -> dict[str, Any]:
    session = await owned_thread(gw, who, thread_id)
    return resources.state(session, (await _turns(gw, who, [session["session_id"]]))[session["session_id"]])


async def create_thread(gw: Gateway, who: Principal, body: ThreadCreate) -> dict[str, Any]:
    chosen = None
    if body.thread_id is not None and (chosen := parse_uuid(body.thread_id)) is None:
        raise Invalid("thread_id must be a UUID")
    try:
        session = await session_repo.create(
            gw.db,
            who,
            who.user_id,
            {"integration_type": "web", "integration_metadata": body.metadata},
            gw.settings.session_ttl_seconds,
            session_id=chosen,
        )
    except asyncpg.UniqueViolationError:
        existing = await session_repo.get(gw.db, who, chosen or "")
        if body.if_exists == "do_nothing" and existing is not None and existing["status"] != "archived":
            return await thread(gw, who, existing["session_id"])
        raise Conflict("a thread with this thread_id already exists") from None
    sink.emit("session.created", session["session_id"], {"user_id": who.user_id}, tenant_id=who.tenant_id)
    return resources.thread(session, "idle", [])


async def search_threads(gw: Gateway, who: Principal, body: ThreadSearch) -> list[dict[str, Any]]:
    if body.values:
        raise Invalid("searching threads by values is not supported; search by metadata")
    ids = None if body.ids is None else [u for u in map(parse_uuid, body.ids) if u]
    sessions = await session_repo.search_threads(
        gw.db,
        who,
        metadata=body.metadata,
        status=body.status,
        ids=ids,
        sort_by=body.sort_by,
        descending=body.sort_order == "desc",
        limit=body.limit,
        offset=body.offset,
    )
    turns = await _turns(gw, who, [s["session_id"] for s in sessions])
    return [resources.thread(s, s["thread_status"], turns[s["session_id"]]) for s in sessions]


async def delete_thread(gw: Gateway, who: Principal, thread_id: str) -> None:
    """Archive the session (its history stays for relaygate's own routes) and cancel what it still runs."""
    sid = (await owned_thread(gw, who, thread_id))["session_id"]
    async with gw.db.acquire() as conn, conn.transaction():
        await session_repo.mark_archived(conn, who, sid)
        unfinished = await request_repo.unfinished_in_session(conn, who, sid)
    sink.emit("session.ended", sid, {"status": "archived"}, tenant_id=who.tenant_id)
    if unfinished:
        await cancel_many(gw, sid, unfinished, "thread deleted")


async def _thread_for_run(gw: Gateway, who: Principal, thread_id: str, if_not_exists: str | None) -> str:
    session = await session_repo.get(gw.db, who, thread_id)
    if session is None and if_not_exists == "create" and (chosen := parse_uuid(thread_id)):
        with contextlib.suppress(asyncpg.UniqueViolationError):  # taken already: found below, or not the caller's
            await session_repo.create(
                gw.db, who, who.user_id, {"integration_type": "web"}, gw.settings.session_ttl_seconds, session_id=chosen
            )
            sink.emit("session.created", chosen, {"user_id": who.user_id}, tenant_id=who.tenant_id)
        session = await session_repo.get(gw.db, who, thread_id)
    if session is None or session["status"] == "archived":
        raise NotFound("thread not found")
    return str(session["session_id"])


@dataclass
class StartedRun:
    view: RunView
    entry_id: str | None

    @property
    def location(self) -> str:
        """Where a client reconnects, relative to the URL it was given (the SDK appends it to that)."""
        return f"/threads/{self.view.thread_id}/runs/{self.view.run_id}"


def _request(text: str, message_id: str | None, thread_id: str, agent_id: str, body: RunCreate) -> LangGraphRequest:
    strategy = body.multitask_strategy or "reject"  # LangGraph's default for a busy thread
    try:
        return LangGraphRequest.model_validate(
            {
                "content": text,
                "session_id": thread_id,
                "agent_id": agent_id,
                "multitask": strategy,
                "metadata": body.metadata or {},
                "langgraph": {
                    "stream_mode": body.modes(),
                    "multitask_strategy": strategy,
                    "metadata": body.metadata or {},
                    "message_id": message_id,
                },
            }
        )
    except ValidationError as exc:
        raise Invalid(
            [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        ) from None


async def start_run(gw: Gateway, who: Principal, thread_id: str, body: RunCreate, *, via: str) -> StartedRun:
    """Accept the run's user turn as a request in the thread's session (multitask_strategy as `multitask`)."""
    reason = body.unsupported()
    if reason:
        raise Invalid(reason)
    chosen = agent(gw, body.assistant_id)
    text, message_id = user_turn(body.input)
    sid = await _thread_for_run(gw, who, thread_id, body.if_not_exists)
    request = _request(text, message_id, sid, chosen.id, body)
    await session_repo.tag_graph(gw.db, sid, chosen.id)
    accepted = await request_service.accept(gw, who, request, idempotency_key=None, correlation_id=correlation_id.get())
    PROTOCOL_REQUESTS.labels("langgraph", via).inc()
    turn = {"content": text, "request_id": accepted.request_id, "langgraph": {"message_id": message_id}}
    view = RunView(
        accepted.request_id,
        sid,
        chosen.id,
        human_of(turn),
        frozenset(body.modes()),
        _prior(gw, who, sid, accepted.request_id),
    )
    return StartedRun(view, accepted.stream_entry_id)


def _prior(gw: Gateway, who: Principal, session_id: str, request_id: str) -> Callable[[], Awaitable[list[Any]]]:
    """The thread's messages before the run, read when a `values` event first needs them."""

    async def load() -> list[dict[str, Any]]:
        return conversation(
            await request_repo.turns_of(gw.db, who, [session_id], THREAD_TURNS, before_request=request_id)
        )

    return load


async def owned_run(gw: Gateway, who: Principal, thread_id: str, run_id: str) -> dict[str, Any]:
    row = await request_repo.with_options(gw.db, who, run_id)
    if row is None or row["session_id"] != parse_uuid(thread_id):
        raise NotFound("run not found")
    await owned_thread(gw, who, thread_id)
    return row


def view_of(gw: Gateway, who: Principal, row: dict[str, Any], modes: list[StreamMode] | None) -> RunView:
    """An existing run's view; no `modes` means the modes it was started with."""
    own = (row.get("langgraph") or {}).get("stream_mode") or ["values"]
    return RunView(
        row["request_id"],
        row["session_id"],
        row["agent_id"] or "",
        human_of(row),
        frozenset(modes or own),
        _prior(gw, who, row["session_id"], row["request_id"]),
    )


async def outcome(gw: Gateway, who: Principal, thread_id: str, run_id: str) -> dict[str, Any]:
    """What `wait` and `join` answer: the thread's values after the run, or the run's error."""
    row = await owned_run(gw, who, thread_id, run_id)
    if row["status"] == "failed":
        return {"__error__": failure(row["error"])[1]}
    turns = (await _turns(gw, who, [row["session_id"]]))[row["session_id"]]
    return {"messages": conversation(turns)}


async def cancel_run(gw: Gateway, who: Principal, thread_id: str, run_id: str, *, wait: bool) -> dict[str, Any]:
    """Cancel the run (a finished one is left as it is); with `wait`, until it has ended (for a few seconds)."""
    row = await owned_run(gw, who, thread_id, run_id)
    if row["status"] in ACTIVE_STATUSES:
        try:
            await request_service.cancel(gw, who, run_id)
        except ApiError as exc:
            if exc.status != 409:  # 409: it ended meanwhile
                raise
        if wait and row["stream_entry_id"]:
            key = stream_key(row["session_id"], gw.settings.stream_buckets)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    wait_for_result(gw.hub, key, just_before(row["stream_entry_id"]), run_id), CANCEL_WAIT_SECONDS
                )
        row = await owned_run(gw, who, thread_id, run_id)
    return resources.run(row)


async def final_events(gw: Gateway, who: Principal, row: dict[str, Any], view: RunView) -> list[LgEvent]:
    """A finished run's events from Postgres, for when its stream entries are gone."""
    events: list[LgEvent] = []
    if row["status"] == "completed" and row["response"] is not None:
        reply = ai(row["response"], ai_id(row["request_id"], row["attempt"]))
        if "updates" in view.modes:
            events.append(("updates", {view.agent_id: {"messages": [reply]}}))
        if "values" in view.modes:
            events.append(("values", {"messages": [*await view.prior(), view.human, reply]}))
    elif row["status"] == "failed":
        events.append(failure(row["error"]))
    return [*events, ("end", None)]


async def runs_of(gw: Gateway, who: Principal, thread_id: str) -> list[dict[str, Any]]:
    """The thread's latest runs, oldest first."""
    sid = (await owned_thread(gw, who, thread_id))["session_id"]
    return (await _turns(gw, who, [sid]))[sid]
