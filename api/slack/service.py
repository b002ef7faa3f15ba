"""A Slack message becomes a request in its conversation's session, and its reply is followed into Slack."""

from __future__ import annotations

import logging
import re

from api.deps import Gateway
from api.requests import service as requests
from api.slack.schemas import SlackRequest
from common.delivery import jobs as delivery
from common.delivery.jobs import SlackFollow, SlackTarget
from common.platform.credentials import Principal
from common.platform.keys import slack_dm_session_key, slack_thread_session_key
from common.requests import intake
from common.requests.intake import Admitted
from common.slack.installations import Installation
from common.streams.protocol import format_id, id_before, parse_id

log = logging.getLogger(__name__)

_MENTION = re.compile(r"<@[A-Z0-9]+>\s*")


def strip_mentions(text: str) -> str:
    return _MENTION.sub("", text).strip()


def session_key(team_id: str, channel_id: str, thread_ts: str | None, user_id: str, *, dm: bool) -> str:
    """A thread is one conversation; a DM outside a thread continues the user's DM conversation."""
    if dm and not thread_ts:
        return slack_dm_session_key(team_id, user_id)
    return slack_thread_session_key(team_id, channel_id, thread_ts or "", user_id)


async def start(
    gw: Gateway,
    inst: Installation,
    body: SlackRequest,
    *,
    key: str | None,
    reply_ts: str | None,
    idempotency_key: str | None,
    correlation_id: str,
    message_ts: str | None = None,
) -> Admitted:
    """Accept the request in the session `key` names (a new one when none is active) and follow its reply."""
    who = Principal(tenant_id=inst.tenant_id, user_id=body.user_id or body.slack_user_id)
    existing = await gw.streams.get(key) if key else None
    accepted: Admitted | None = None
    if existing:
        try:
            accepted = await intake.accept(
                gw,
                who,
                body.model_copy(update={"session_id": existing.decode()}),
                idempotency_key=idempotency_key,
                correlation_id=correlation_id,
            )
        except (intake.NoSuchSession, intake.Conflicting):
            pass  # the conversation's session is gone, closed or busy: it continues in a new one
        except intake.Refused as exc:
            raise requests.http_error(exc) from exc
    if accepted is None:
        accepted = await requests.accept(
            gw,
            who,
            body.model_copy(update={"new_session": True}),
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )
    if key:
        await gw.streams.set(key, accepted.session_id, ex=gw.settings.session_ttl_seconds)
    # A replay follows too: Slack retries an event we failed to answer, and the first try may have stored the
    # request and died before queueing its follow. The job id makes a second follow a no-op (or, once the
    # first ended, a job that finds its attempt closed).
    if accepted.stream_entry_id:
        follow = SlackFollow(
            request_id=accepted.request_id,
            session_id=accepted.session_id,
            tenant_id=inst.tenant_id,
            user_id=who.user_id,
            after=format_id(id_before(parse_id(accepted.stream_entry_id))),
            target=SlackTarget(
                team_id=inst.team_id,
                channel_id=body.channel_id,
                thread_ts=reply_ts,
                slack_user_id=body.slack_user_id,
                message_ts=message_ts,
            ),
            correlation_id=correlation_id,
        )
        await delivery.enqueue_slack(gw.queue, follow)
    return accepted


async def new_conversation(gw: Gateway, key: str) -> None:
    """The next message starts a new session (the ended one stays readable)."""
    await gw.streams.delete(key)
