"""`/relaygate schedule ...`: a Slack user's scheduled runs, replying in the channel they were made in."""

from __future__ import annotations

import shlex
import uuid

from api.deps import Gateway
from api.errors import ApiError
from api.schedules import service
from common.delivery.jobs import SlackTarget
from common.platform.credentials import Principal
from common.slack.installations import Installation

USAGE = (
    'Usage: schedule "<minute hour day month weekday>" [tz=Europe/Berlin] <what to ask>'
    " | schedule list | schedule delete <id>"
)


async def command(gw: Gateway, inst: Installation, user: str, channel: str, text: str) -> str:
    """Run one `schedule` command for the Slack user; returns the (ephemeral) answer."""
    try:
        args = shlex.split(text)[1:]
    except ValueError:
        return USAGE
    who = Principal(tenant_id=inst.tenant_id, user_id=user)
    if args == ["list"]:
        rows = await gw.db.fetch(
            "SELECT schedule_id::text, cron, timezone, next_run_at, content FROM schedules"
            " WHERE tenant_id = $1 AND user_id = $2 ORDER BY id LIMIT 50",
            who.tenant_id,
            user,
        )
        return (
            "\n".join(
                f"`{r['schedule_id']}` `{r['cron']}` ({r['timezone']}), next {r['next_run_at']:%Y-%m-%d %H:%M}"
                f" UTC: {r['content'][:80]}"
                for r in rows
            )
            or "No schedules."
        )
    if len(args) == 2 and args[0] == "delete":
        try:
            schedule_id = uuid.UUID(args[1])
        except ValueError:
            return f"No schedule {args[1]!r}."
        result: str = await gw.db.execute(
            "DELETE FROM schedules WHERE schedule_id = $1 AND tenant_id = $2 AND user_id = $3",
            schedule_id,
            who.tenant_id,
            user,
        )
        return f"Deleted `{schedule_id}`." if result.endswith(" 1") else f"No schedule {args[1]!r}."
    if not args:
        return USAGE
    cron, rest, timezone = args[0], args[1:], "UTC"
    if rest and rest[0].startswith("tz="):
        timezone, rest = rest[0][3:], rest[1:]
    if not rest:
        return USAGE
    try:
        row = await service.create(
            gw,
            who,
            cron=cron,
            timezone=timezone,
            content=" ".join(rest),
            slack_target=SlackTarget(team_id=inst.team_id, channel_id=channel, slack_user_id=user),
        )
    except ApiError as exc:
        return f"Could not schedule that: {exc.detail}"
    return (
        f"Scheduled `{row['schedule_id']}`: `{row['cron']}` ({row['timezone']}), next"
        f" {row['next_run_at']:%Y-%m-%d %H:%M} UTC. The reply comes here."
    )
