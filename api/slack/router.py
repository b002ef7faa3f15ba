"""Slack's ways in: Events API, slash commands, interactive buttons and the guide's /api/v1/requests/slack.

Authenticated by Slack's request signature (never a bearer token), checked over the raw body with
the signing secret of the workspace the body names, before anything else is read or done; a
signature is accepted once. Slack expects an answer within 3 s: the work itself runs in the queues.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from slack_sdk.signature import Clock

from api.deps import Gateway, GatewayDep
from api.errors import ApiError, BadRequest, Unauthorized, responses
from api.requests import service as requests_service
from api.requests.schemas import Accepted
from api.responses import JSONResponse
from api.slack import approvals, schedules, service
from api.slack.schemas import SlackRequest
from api.slack.verify import seconds_valid, verify
from common.platform.credentials import Principal
from common.platform.keys import slack_event_key, slack_replay_key
from common.platform.logging import correlation_id
from common.slack import actions, installations, mrkdwn

log = logging.getLogger(__name__)

router = APIRouter(tags=["slack"], responses=responses(BadRequest, Unauthorized, signed_in=False))

EVENT_DEDUPE_SECONDS = 3600
MAX_FORM_FIELDS = 100
_CLOCK = Clock()


@dataclass(frozen=True)
class Signed:
    """A Slack request whose signature checked out with the secret of the workspace it names."""

    raw: bytes
    installation: installations.Installation | None  # None only for a body naming no workspace (url_verification)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("body is not JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("body is not a JSON object")
    return value


def _form(raw: bytes) -> dict[str, str]:
    try:
        fields = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise BadRequest(f"form body with more than {MAX_FORM_FIELDS} fields") from None
    return {k: v[0] for k, v in fields.items()}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None


def _unsigned_json(raw: bytes) -> Any:
    """The body as JSON, read only to find the workspace before the signature is checked."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _event_team(raw: bytes) -> str:
    payload = _unsigned_json(raw)
    return _text(_field(payload, "team_id")) or _text(_field(_field(payload, "event"), "team"))


def _command_team(raw: bytes) -> str:
    return _form(raw).get("team_id", "")


def _interactive_team(raw: bytes) -> str:
    return _text(_field(_field(_unsigned_json(_form(raw).get("payload", "").encode()), "team"), "id"))


def _request_team(raw: bytes) -> str:
    return _text(_field(_unsigned_json(raw), "slack_team_id"))


def _cache(request: Request) -> installations.InstallationCache:
    cache: installations.InstallationCache | None = getattr(request.app.state, "slack_installations", None)
    if cache is None:
        cache = request.app.state.slack_installations = installations.InstallationCache()
    return cache


def signed(
    team_of: Callable[[bytes], str], *, workspace_optional: bool = False
) -> Callable[[Request, Gateway], AsyncIterator[Signed]]:
    """A dependency: the body verified with the secret of the workspace `team_of` reads from it, once.

    The installation comes from the gateway's cached copy, so no unsigned request reaches
    Postgres. A verified signature is claimed in Redis until it leaves Slack's window: the same
    request sent again is refused as a replay. A request that fails gives its claim back, so a
    retry of the same bytes can still be tried.
    """

    async def dependency(request: Request, gw: GatewayDep) -> AsyncIterator[Signed]:
        raw = await request.body()
        team = team_of(raw)
        cache = _cache(request)
        found = await cache.get(gw.db, gw.settings, team) if team else None
        if team and found is None:
            log.info("Slack request for a workspace with no installation", extra={"team_id": team[:64]})
        if found is not None:
            secrets = [found.signing_secret] if found.signing_secret else []
        elif not team and workspace_optional:
            secrets = await cache.signing_secrets(gw.db, gw.settings)
        else:
            raise Unauthorized("invalid or expired Slack signature")
        clock: Clock = getattr(request.app.state, "slack_clock", _CLOCK)
        verify(raw, request.headers, secrets, clock)
        key = slack_replay_key(request.headers["x-slack-request-timestamp"], request.headers["x-slack-signature"])
        if not await gw.streams.set(key, "1", nx=True, ex=seconds_valid(request.headers, clock)):
            raise Unauthorized("this signed Slack request was already received: a replay is refused")
        try:
            yield Signed(raw, found)
        except BaseException:
            await gw.streams.delete(key)
            raise

    return dependency


def _known(signed_request: Signed) -> installations.Installation:
    """The installation of a route whose body must name its workspace (the signature check made sure)."""
    if signed_request.installation is None:
        raise Unauthorized("the Slack request names no workspace")
    return signed_request.installation


def _ignored(event: dict[str, Any], inst: installations.Installation) -> bool:
    """Bots (relaygate included) never start a request: no reply loops. Edits and joins neither."""
    return bool(
        event.get("bot_id")
        or event.get("subtype")
        or not event.get("user")
        or (inst.bot_user_id and event.get("user") == inst.bot_user_id)
    )


@router.post("/slack/events", include_in_schema=False)
async def events(
    gw: GatewayDep, signed_request: Annotated[Signed, Depends(signed(_event_team, workspace_optional=True))]
) -> Response:
    payload = _json(signed_request.raw)
    if payload.get("type") == "url_verification":
        return JSONResponse({"challenge": payload.get("challenge", "")})
    inst = signed_request.installation
    if payload.get("type") != "event_callback":
        return JSONResponse({"ok": True})
    if inst is None:
        raise BadRequest("a Slack event must name its workspace (team_id)")
    event = payload.get("event")
    if not isinstance(event, dict):
        return JSONResponse({"ok": True})
    team_id = inst.team_id
    kind = event.get("type")
    dm = kind == "message" and event.get("channel_type") == "im"
    if kind != "app_mention" and not dm:
        return JSONResponse({"ok": True})
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
        body = SlackRequest(
            user_id=user,
            content=text or "(empty message)",
            channel_id=str(event.get("channel")),
            thread_id=reply_ts,
            slack_user_id=user,
            slack_team_id=team_id,
        )
        await service.start(
            gw,
            inst,
            body,
            key=service.session_key(team_id, body.channel_id, reply_ts, user, dm=dm),
            reply_ts=reply_ts,
            idempotency_key=f"slack-event:{event_id}",
            correlation_id=correlation_id.get(),
            message_ts=event.get("ts"),
        )
    except BaseException:
        await gw.streams.delete(key)  # not queued: Slack's retry must be able to try again
        raise
    return JSONResponse({"ok": True})


@router.post("/slack/commands", include_in_schema=False)
async def commands(gw: GatewayDep, signed_request: Annotated[Signed, Depends(signed(_command_team))]) -> Response:
    form = _form(signed_request.raw)
    text = form.get("text", "").strip()
    if not text:
        usage = f"Usage: {mrkdwn.escape(form.get('command', '/ask'))} {mrkdwn.escape('<question>')}"
        return JSONResponse({"response_type": "ephemeral", "text": usage})
    inst = _known(signed_request)
    user = form.get("user_id", "")
    if text.split()[0].lower() == "schedule":
        answer = await schedules.command(gw, inst, user, form.get("channel_id", ""), text)
        return JSONResponse({"response_type": "ephemeral", "text": answer})
    body = SlackRequest(
        user_id=user,
        content=text,
        channel_id=form.get("channel_id", ""),
        slack_user_id=user,
        slack_team_id=inst.team_id,
        new_session=True,
    )
    trigger = form.get("trigger_id")
    await service.start(
        gw,
        inst,
        body,
        key=None,
        reply_ts=None,
        idempotency_key=f"slack-command:{trigger}" if trigger else None,
        correlation_id=correlation_id.get(),
    )
    return JSONResponse({"response_type": "ephemeral", "text": "Working on it…"})


@router.post("/slack/interactive", include_in_schema=False)
async def interactive(
    gw: GatewayDep, signed_request: Annotated[Signed, Depends(signed(_interactive_team))]
) -> Response:
    payload = _json(_form(signed_request.raw).get("payload", "").encode())
    inst = _known(signed_request)
    team_id = inst.team_id
    who = Principal(tenant_id=inst.tenant_id, user_id=str((payload.get("user") or {}).get("id") or ""))
    channel = str((payload.get("channel") or {}).get("id") or "")
    for action in payload.get("actions") or []:
        value = str(action.get("value") or "")
        if action.get("action_id") in (actions.APPROVE, actions.DENY):
            await approvals.press(gw, inst, who, channel, value, approve=action.get("action_id") == actions.APPROVE)
        elif action.get("action_id") == actions.CANCEL:
            try:
                await requests_service.cancel(gw, who, value, "cancelled in Slack")
            except ApiError as exc:
                if exc.status not in (404, 409):
                    raise
        elif action.get("action_id") == actions.NEW:
            thread_ts = (payload.get("message") or {}).get("thread_ts")
            dm = channel.startswith("D")
            await service.new_conversation(gw, service.session_key(team_id, channel, thread_ts, who.user_id, dm=dm))
    return Response(status_code=200)


@router.post(
    "/api/v1/requests/slack",
    status_code=202,
    response_model=Accepted,
    tags=["requests"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": SlackRequest.model_json_schema(ref_template="#/components/schemas/{model}")
                }
            },
        }
    },
)
async def slack_request(
    request: Request,
    gw: GatewayDep,
    signed_request: Annotated[Signed, Depends(signed(_request_team))],
    x_slack_signature: Annotated[str | None, Header(description="v0=<hex HMAC-SHA256>")] = None,
    x_slack_request_timestamp: Annotated[str | None, Header()] = None,
) -> Response:
    """The integration guide's Slack request, signed like Slack's own requests (by the workspace's secret)."""
    try:
        body = SlackRequest.model_validate_json(signed_request.raw)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    inst = _known(signed_request)
    thread = body.thread_id
    accepted = await service.start(
        gw,
        inst,
        body,
        key=service.session_key(
            inst.team_id, body.channel_id, thread, body.slack_user_id, dm=body.channel_id.startswith("D")
        ),
        reply_ts=thread,
        idempotency_key=request.headers.get("idempotency-key"),
        correlation_id=correlation_id.get(),
    )
    out = Accepted(
        request_id=accepted.request_id,
        session_id=accepted.session_id,
        status=accepted.status,
        stream_url=f"/api/v1/sessions/{accepted.session_id}/stream",
        stream_entry_id=accepted.stream_entry_id,
    )
    return JSONResponse(out.model_dump(), status_code=202)
