"""Slack's ways in: Events API, slash commands, interactive buttons and the guide's /api/v1/requests/slack.

Authenticated by Slack's request signature (never a bearer token), checked over the raw body
before anything is parsed. Slack expects an answer within 3 s: the work itself runs in the queues.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from slack_sdk.signature import Clock

from api.deps import Gateway, GatewayDep
from api.errors import ApiError
from api.requests import service as requests_service
from api.requests.schemas import Accepted
from api.responses import JSONResponse
from api.slack import schedules, service
from api.slack.schemas import SlackRequest
from api.slack.verify import verify
from common import slack as installations
from common.auth import Principal
from common.keys import slack_event_key
from common.logging import correlation_id

log = logging.getLogger(__name__)

router = APIRouter(tags=["slack"])

EVENT_DEDUPE_SECONDS = 3600
CANCEL_ACTION = "rg_cancel"
NEW_ACTION = "rg_new"
_CLOCK = Clock()


async def _verified(request: Request, gw: Gateway) -> bytes:
    raw = await request.body()
    clock: Clock = getattr(request.app.state, "slack_clock", _CLOCK)
    verify(raw, request.headers, await installations.signing_secrets(gw.db, gw.settings), clock)
    return raw


async def _installation(gw: Gateway, team_id: str) -> installations.Installation:
    inst = await installations.installation(gw.db, gw.settings, team_id)
    if inst is None:
        raise ApiError(403, f"Slack workspace {team_id!r} is not installed")
    return inst


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "body is not JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "body is not a JSON object")
    return value


def _form(raw: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}


def _ignored(event: dict[str, Any], inst: installations.Installation) -> bool:
    """Bots (relaygate included) never start a request: no reply loops. Edits and joins neither."""
    return bool(event.get("bot_id") or event.get("subtype") or not event.get("user")
                or (inst.bot_user_id and event.get("user") == inst.bot_user_id))


@router.post("/slack/events", include_in_schema=False)
async def events(request: Request, gw: GatewayDep) -> Response:
    payload = _json(await _verified(request, gw))
    if payload.get("type") == "url_verification":
        return JSONResponse({"challenge": payload.get("challenge", "")})
    if payload.get("type") != "event_callback":
        return JSONResponse({"ok": True})
    event: dict[str, Any] = payload.get("event") or {}
    team_id = str(payload.get("team_id") or event.get("team") or "")
    kind = event.get("type")
    dm = kind == "message" and event.get("channel_type") == "im"
    if kind != "app_mention" and not dm:
        return JSONResponse({"ok": True})
    inst = await _installation(gw, team_id)
    if _ignored(event, inst):
        return JSONResponse({"ok": True})
    event_id = str(payload.get("event_id") or "")
    key = slack_event_key(team_id, event_id)
    if not event_id or not await gw.streams.set(key, "1", nx=True, ex=EVENT_DEDUPE_SECONDS):
        return JSONResponse({"ok": True, "duplicate": True})
    try:
        text = service.strip_mentions(str(event.get("text") or ""))
        thread_ts = event.get("thread_ts")
        reply_ts = thread_ts or (None if dm else event.get("ts"))
        user = str(event["user"])
        body = SlackRequest(user_id=user, content=text or "(empty message)", channel_id=str(event.get("channel")),
                            thread_id=reply_ts, slack_user_id=user, slack_team_id=team_id)
        await service.start(gw, inst, body, key=service.session_key(team_id, body.channel_id, reply_ts, user, dm=dm),
                            reply_ts=reply_ts, idempotency_key=f"slack-event:{event_id}",
                            correlation_id=correlation_id.get(), message_ts=event.get("ts"))
    except BaseException:
        await gw.streams.delete(key)  # not queued: Slack's retry must be able to try again
        raise
    return JSONResponse({"ok": True})


@router.post("/slack/commands", include_in_schema=False)
async def commands(request: Request, gw: GatewayDep) -> Response:
    form = _form(await _verified(request, gw))
    text = form.get("text", "").strip()
    if not text:
        return JSONResponse({"response_type": "ephemeral", "text": f"Usage: {form.get('command', '/ask')} <question>"})
    inst = await _installation(gw, form.get("team_id", ""))
    user = form.get("user_id", "")
    if text.split()[0].lower() == "schedule":
        answer = await schedules.command(gw, inst, user, form.get("channel_id", ""), text)
        return JSONResponse({"response_type": "ephemeral", "text": answer})
    body = SlackRequest(user_id=user, content=text, channel_id=form.get("channel_id", ""), slack_user_id=user,
                        slack_team_id=inst.team_id, new_session=True)
    trigger = form.get("trigger_id")
    await service.start(gw, inst, body, key=None, reply_ts=None,
                        idempotency_key=f"slack-command:{trigger}" if trigger else None,
                        correlation_id=correlation_id.get())
    return JSONResponse({"response_type": "ephemeral", "text": "Working on it…"})


@router.post("/slack/interactive", include_in_schema=False)
async def interactive(request: Request, gw: GatewayDep) -> Response:
    form = _form(await _verified(request, gw))
    payload = _json(form.get("payload", "").encode())
    team_id = str((payload.get("team") or {}).get("id") or "")
    inst = await _installation(gw, team_id)
    who = Principal(tenant_id=inst.tenant_id, user_id=str((payload.get("user") or {}).get("id") or ""))
    for action in payload.get("actions") or []:
        value = str(action.get("value") or "")
        if action.get("action_id") == CANCEL_ACTION:
            try:
                await requests_service.cancel(gw, who, value, "cancelled in Slack")
            except ApiError as exc:
                if exc.status not in (404, 409):
                    raise
        elif action.get("action_id") == NEW_ACTION:
            channel = str((payload.get("channel") or {}).get("id") or "")
            thread_ts = (payload.get("message") or {}).get("thread_ts")
            dm = channel.startswith("D")
            await service.new_conversation(gw, service.session_key(team_id, channel, thread_ts, who.user_id, dm=dm))
    return Response(status_code=200)


@router.post("/api/v1/requests/slack", status_code=202, response_model=Accepted, tags=["requests"],
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": SlackRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
async def slack_request(
    request: Request, gw: GatewayDep,
    x_slack_signature: Annotated[str | None, Header(description="v0=<hex HMAC-SHA256>")] = None,
    x_slack_request_timestamp: Annotated[str | None, Header()] = None,
) -> Response:
    """The integration guide's Slack request, signed like Slack's own requests."""
    raw = await _verified(request, gw)
    try:
        body = SlackRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    inst = await _installation(gw, body.slack_team_id)
    thread = body.thread_id
    accepted = await service.start(
        gw, inst, body, key=service.session_key(inst.team_id, body.channel_id, thread, body.slack_user_id,
                                                dm=body.channel_id.startswith("D")),
        reply_ts=thread, idempotency_key=request.headers.get("idempotency-key"),
        correlation_id=correlation_id.get())
    out = Accepted(request_id=accepted.request_id, session_id=accepted.session_id, status=accepted.status,
                   stream_url=f"/api/v1/sessions/{accepted.session_id}/stream",
                   stream_entry_id=accepted.stream_entry_id)
    return JSONResponse(out.model_dump(), status_code=202)
