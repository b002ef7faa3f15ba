"""Approve/Deny buttons pressed in Slack: only the person whose request it is decides; anyone else is told
why in a message only they see."""

from __future__ import annotations

import orjson

from api.deps import Gateway
from api.errors import ApiError, BadRequest
from api.requests import service as requests_service
from common.delivery import jobs as delivery
from common.delivery.jobs import SlackNotice
from common.platform.credentials import Principal
from common.slack.installations import Installation

NOT_YOURS = "Only the person who asked can approve or deny this tool call."
NOT_WAITING = "This tool call was already decided, or its request no longer waits for a decision."
DENIED_REASON = "denied in Slack"


def _call(value: str) -> tuple[str, str]:
    try:
        found = orjson.loads(value)
        return str(found["request_id"]), str(found["call_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise BadRequest("an approval button names no request_id and call_id") from None


async def press(gw: Gateway, inst: Installation, who: Principal, channel_id: str, value: str, approve: bool) -> None:
    """Record the presser's decision when the request is theirs (in the workspace's tenant); else refuse."""
    request_id, call_id = _call(value)
    try:
        await requests_service.get(gw, who, request_id)
    except ApiError as exc:
        if exc.status != 404:
            raise
        return await _tell(gw, inst, who, channel_id, NOT_YOURS)
    try:
        await requests_service.decide(gw, who, request_id, call_id, approve, "" if approve else DENIED_REASON)
    except ApiError as exc:
        if exc.status not in (404, 409):
            raise
        await _tell(gw, inst, who, channel_id, NOT_WAITING)


async def _tell(gw: Gateway, inst: Installation, who: Principal, channel_id: str, text: str) -> None:
    await delivery.enqueue_slack_notice(
        gw.queue,
        SlackNotice(
            team_id=inst.team_id, tenant_id=inst.tenant_id, channel_id=channel_id, slack_user_id=who.user_id, text=text
        ),
    )
