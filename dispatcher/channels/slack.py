"""SLACK delivery: the reply posted in its thread and edited as it is written, within a per-workspace budget.

The dispatcher follows the session stream through its one hub (never a reader per delivery),
posts a placeholder at once, edits it at most every SLACK_EDIT_INTERVAL_SECONDS while the
workspace's shared `chat.update` budget allows, and always sends the final text. The posted
message's ts is stored on the delivery row first, so a job that runs again after a crash
edits that message instead of posting another.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from arq import Retry
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_chat_stream import AsyncChatStream
from slack_sdk.web.async_client import AsyncWebClient

from common.delivery import configs as channel_configs
from common.delivery import jobs as delivery
from common.delivery.jobs import DeliveryJob, SlackFollow, SlackTarget
from common.platform import lua
from common.platform.keys import slack_edit_budget_key
from common.platform.logging import correlation_id
from common.platform.outages import outlast
from common.slack import access as slack_access
from common.slack import actions, installations, mrkdwn
from common.streams.hub import Entry, batches
from common.streams.protocol import parse_id
from dispatcher import records
from dispatcher.channels import DeliveryError, Reply, slack_steps
from dispatcher.runtime import DispatcherRuntime

log = logging.getLogger(__name__)

TERMINAL = {"run.completed": "completed", "run.failed": "failed", "run.cancelled": "cancelled"}

_SPEND = lua.load(__file__, "spend.lua")


class ShortRateLimitRetryHandler(AsyncRateLimitErrorRetryHandler):
    """Waits out a 429 inside the call only when Slack asks for a short pause; a long one re-schedules the job."""

    def __init__(self, max_wait: float) -> None:
        super().__init__(max_retry_count=2)
        self.max_wait = max_wait

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        return _retry_after(response.headers) <= self.max_wait


def _retry_after(headers: dict[str, Any]) -> float:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                return float(raw)
            except (TypeError, ValueError):
                return 1.0
    return 1.0


def client(rt: DispatcherRuntime, token: str) -> AsyncWebClient:
    """One client per bot token and process, with retries for connection errors, 5xx and short 429s."""
    found = rt.slack_clients.get(token)
    if found is None:
        base = rt.settings.slack_api_url or AsyncWebClient.BASE_URL
        found = AsyncWebClient(
            token=token,
            base_url=base,
            timeout=15,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=2),
                AsyncServerErrorRetryHandler(max_retry_count=2),
                ShortRateLimitRetryHandler(rt.settings.slack_max_retry_after_seconds),
            ],
        )
        rt.slack_clients[token] = found
    return found


async def close_clients(rt: DispatcherRuntime) -> None:
    for web in rt.slack_clients.values():
        session = getattr(web, "session", None)
        if session is not None:
            await session.close()
    rt.slack_clients.clear()


async def spend_edit(rt: DispatcherRuntime, team_id: str) -> bool:
    """Take one `chat.update` from the workspace's budget for this minute, if any is left."""
    window = int(time.time() // 60)
    used = await rt.queue.eval(_SPEND, 1, slack_edit_budget_key(team_id, window))  # type: ignore[misc]
    return int(used) <= rt.settings.slack_edits_per_minute


def chunks(text: str, size: int) -> list[str]:
    """Split at line ends (else spaces) so each part fits one Slack message; never inside an `&amp;`-style escape."""
    parts: list[str] = []
    while len(text) > size:
        cut = text.rfind("\n", 0, size)
        if cut < size // 2:
            cut = text.rfind(" ", 0, size)
        if cut < size // 2:
            cut = mrkdwn.safe_cut(text, size)
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [*parts, text] if text or not parts else parts


@dataclass
class Message:
    """What the Slack message shows, from the request's stream events."""

    target: SlackTarget
    config: dict[str, Any]
    request_id: str
    attempt: int = 0
    text: str = ""
    agent_id: str | None = None
    status: str | None = None
    error: str | None = None
    refs: list[str] = field(default_factory=list)
    steps: dict[str, slack_steps.Step] = field(default_factory=dict)
    urgent: bool = False  # a call waits for a person: show it now, whatever the edit interval

    def apply(self, event: dict[str, Any]) -> None:
        kind, data = event["type"], event.get("data") or {}
        if event["attempt"] < self.attempt:
            return
        if event["attempt"] > self.attempt:
            self.attempt, self.text = event["attempt"], ""  # a new attempt replaces the lost one's words
        if kind.startswith("tool."):
            self.urgent = slack_steps.apply(self.steps, kind, data) or self.urgent
        elif kind == "token":
            self.text += data.get("text", "")
        elif kind == "message":
            self.text = data.get("content", self.text)
            self.agent_id = data.get("agent_id")
        elif kind == "run.started":
            self.agent_id = data.get("agent_id")
        elif kind in TERMINAL:
            self.status = TERMINAL[kind]
            self.error = data.get("error") or data.get("reason")

    def body(self, size: int) -> str:
        """The message's mrkdwn: the reply and any error escaped; mentions only where relaygate adds them."""
        mention = mrkdwn.mention(self.target.slack_user_id) if self.config.get("mention_user") else ""
        prefix = f"{mention} " if mention else ""
        text = mrkdwn.escape(self.text)
        if self.status == "failed":
            return f"{prefix}Sorry, the reply failed: {mrkdwn.escape(self.error or 'unknown error')}"
        if self.status == "cancelled":
            return f"{prefix}{text}\n_(cancelled)_" if text else f"{prefix}_Cancelled._"
        if self.status is None:
            return prefix + (mrkdwn.clip(text, size) if text else "…")
        return prefix + chunks(text or "(no reply)", size)[0]

    def blocks(self, text: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
        out += slack_steps.blocks(self.steps, self.request_id, open_=self.status is None)
        if self.status is None:
            out.append(
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "action_id": actions.CANCEL,
                            "text": {"type": "plain_text", "text": "Cancel"},
                            "value": self.request_id,
                            "style": "danger",
                        }
                    ],
                }
            )
            return out
        if self.config.get("include_agent_info", True) and self.agent_id:
            out.append(
                {
                    "type": "context",
                    "elements": [{"type": "mrkdwn", "text": f"Answered by {mrkdwn.escape(self.agent_id)}"}],
                }
            )
        out.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": actions.NEW,
                        "text": {"type": "plain_text", "text": "New conversation"},
                        "value": "new",
                    }
                ],
            }
        )
        return out


class Poster:
    """Posts once, then edits; remembers every message ts on the delivery row."""

    def __init__(self, rt: DispatcherRuntime, web: AsyncWebClient, msg: Message, delivery_id: str) -> None:
        self.rt, self.web, self.msg, self.delivery_id = rt, web, msg, delivery_id
        self.last_edit = 0.0
        self.shown = ""
        # Slack's native streaming (chat.startStream/appendStream/stopStream) works in threads only;
        # a job that runs again after a crash finishes an already started message by editing it.
        self.native = bool(rt.settings.slack_native_streaming and msg.target.thread_ts and not msg.refs)
        self.streamer: AsyncChatStream | None = None
        self.streamed = 0

    async def _remember(self) -> None:
        refs = ",".join(self.msg.refs)
        await outlast("slack message ref", lambda: records.set_ref(self.rt.db, self.delivery_id, refs))

    async def _stream(self, *, final: bool) -> None:
        target = self.msg.target
        if self.streamer is None:
            self.streamer = await self.web.chat_stream(
                channel=target.channel_id,
                thread_ts=target.thread_ts or "",
                buffer_size=1,
                recipient_team_id=target.team_id,
                recipient_user_id=target.slack_user_id or None,
            )
        delta = self.msg.text[self.streamed :]
        if delta and not final:
            await self.streamer.append(markdown_text=mrkdwn.escape(delta))
            self.streamed += len(delta)
        if self.streamer.ts and not self.msg.refs:
            self.msg.refs.append(self.streamer.ts)
            await self._remember()
        if final:
            tail = (
                mrkdwn.escape(delta)
                if self.msg.status == "completed"
                else self.msg.body(self.rt.settings.slack_message_chars)
            )
            await self.streamer.stop(markdown_text=tail or None, blocks=self.msg.blocks("")[1:])
            if self.streamer.ts and not self.msg.refs:
                self.msg.refs.append(self.streamer.ts)
                await self._remember()
        self.last_edit = time.monotonic()

    async def _leave_stream(self) -> None:
        """Tool steps and their buttons need blocks, which a streamed message gets only at its end: stop
        streaming and edit the message from here on."""
        self.native = False
        if self.streamer is not None:
            await self.streamer.stop()
            if self.streamer.ts and not self.msg.refs:
                self.msg.refs.append(self.streamer.ts)
                await self._remember()

    async def show(self, *, final: bool = False) -> None:
        if self.native and self.msg.steps:
            await self._leave_stream()
        if self.native:
            await self._stream(final=final)
            return
        size = self.rt.settings.slack_message_chars
        text = self.msg.body(size)
        if text == self.shown and not final:
            return
        target = self.msg.target
        if not self.msg.refs:
            response = await self.web.chat_postMessage(
                channel=target.channel_id, thread_ts=target.thread_ts, text=text, blocks=self.msg.blocks(text)
            )
            self.msg.refs.append(str(response["ts"]))
            await self._remember()
        else:
            await self.web.chat_update(
                channel=target.channel_id, ts=self.msg.refs[0], text=text, blocks=self.msg.blocks(text)
            )
        self.shown, self.last_edit = text, time.monotonic()
        if final and self.msg.status == "completed":
            await self._follow_ups(size)

    async def _follow_ups(self, size: int) -> None:
        """The rest of a long reply, as further messages in the thread (never posted twice)."""
        parts = chunks(mrkdwn.escape(self.msg.text), size)[1:]
        thread = self.msg.target.thread_ts or self.msg.refs[0]
        for index, part in enumerate(parts, start=1):
            if index < len(self.msg.refs):
                continue
            response = await self.web.chat_postMessage(channel=self.msg.target.channel_id, thread_ts=thread, text=part)
            self.msg.refs.append(str(response["ts"]))
            await self._remember()

    async def maybe_edit(self) -> None:
        if time.monotonic() - self.last_edit < self.rt.settings.slack_edit_interval_seconds:
            return
        if await spend_edit(self.rt, self.msg.target.team_id):
            await self.show()


def _failure(exc: SlackApiError) -> DeliveryError:
    status = exc.response.status_code
    error = str(exc.response.get("error", "")) if isinstance(exc.response.data, dict) else ""
    if status == 429:
        return DeliveryError("Slack rate limited the reply", retry_after=_retry_after(dict(exc.response.headers)))
    return DeliveryError(f"Slack answered {status} {error}".strip(), retryable=status >= 500)


async def follow(ctx: dict[str, Any], raw: dict[str, Any]) -> str:
    """Show a Slack request's reply in its thread while it is written; the final text always goes out."""
    rt: DispatcherRuntime = ctx["rt"]
    f = SlackFollow.model_validate(raw)
    correlation_id.set(f.correlation_id)
    job = DeliveryJob(
        request_id=f.request_id,
        session_id=f.session_id,
        tenant_id=f.tenant_id,
        user_id=f.user_id,
        channel="SLACK",
        correlation_id=f.correlation_id,
    )
    row = await outlast("open delivery attempt", lambda: records.open_attempt(rt.db, job, follows=True))
    if row["status"] != "PENDING":
        return str(row["status"])
    delivery_id = row["delivery_id"]
    configs = await outlast(
        "delivery settings", lambda: channel_configs.effective_for(rt.db, rt.settings, f.tenant_id, f.user_id)
    )
    cfg = configs.get("SLACK") or channel_configs.ChannelConfig()
    target = f.target
    if not target.thread_ts and target.message_ts and cfg.config.get("thread_replies"):
        target = target.model_copy(update={"thread_ts": target.message_ts})
    msg = Message(
        target=target,
        config=cfg.config,
        request_id=f.request_id,
        refs=[r for r in (row["external_ref"] or "").split(",") if r],
    )
    inst = await outlast(
        "slack installation", lambda: installations.of_tenant(rt.db, rt.settings, f.tenant_id, f.target.team_id)
    )
    if inst is None:
        await _close(rt, job, msg, delivery_id, "FAILED", "the Slack workspace is not installed for this tenant")
        return "FAILED"
    poster = Poster(rt, client(rt, inst.bot_token), msg, delivery_id)
    deadline = time.monotonic() + rt.settings.delivery_job_timeout_seconds * 0.8
    try:
        if not msg.refs and not poster.native:
            await poster.show()
        if not await _follow_until(rt, f, poster, deadline):
            await delivery.enqueue_slack(rt.queue, f.model_copy(update={"part": f.part + 1}))
            return "continued"
        await poster.show(final=True)
    except SlackApiError as exc:
        failure = _failure(exc)
        tries = int(ctx.get("job_try", 1))
        if failure.retryable and tries <= cfg.retry_count:
            log.warning("Slack delivery will be retried", extra={"request_id": f.request_id, "error": str(failure)})
            raise Retry(
                defer=max(failure.retry_after or 0, cfg.retry_delay_seconds * rt.settings.delivery_retry_delay_scale)
            ) from None
        await _close(rt, job, msg, delivery_id, "FAILED", str(failure))
        return "FAILED"
    await _close(rt, job, msg, delivery_id, "SUCCESS", None)
    return "SUCCESS"


async def _follow_until(rt: DispatcherRuntime, f: SlackFollow, poster: Poster, deadline: float) -> bool:
    """Show the request's events as they come; True once it ended, False when the job's time ran out first
    (also while nothing happens, e.g. a request waiting for an approval)."""
    msg = poster.msg
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0)) as limit:
            async for batch in batches(rt.hub, rt.writer.key(f.session_id), parse_id(f.after)):
                for item in batch:
                    if isinstance(item, Entry) and item.request_id.decode() == f.request_id:
                        msg.apply(orjson.loads(item.json))
                if msg.status:
                    return True
                if msg.urgent:
                    msg.urgent = False
                    await poster.show()
                else:
                    await poster.maybe_edit()
    except TimeoutError:
        if limit.expired():
            return False
        raise
    return True


async def _close(
    rt: DispatcherRuntime,
    job: DeliveryJob,
    msg: Message,
    delivery_id: str,
    status: channel_configs.DeliveryStatus,
    detail: str | None,
) -> None:
    refs = ",".join(msg.refs) or None
    await outlast("close delivery attempt", lambda: records.close_attempt(rt.db, delivery_id, status, detail, refs))
    await records.announce(
        rt.writer, job, max(msg.attempt, 1), delivery_id, status, detail or f"Slack {msg.target.channel_id}"
    )


async def post_reply(rt: DispatcherRuntime, job: DeliveryJob, config: dict[str, Any], reply: Reply) -> str | None:
    """A finished reply posted to the Slack channel a user's SLACK override names (non-Slack requests).

    The channel is checked again here (the job's tenant's own workspace, a channel the user
    asked the bot in): an override saved before the rule, or a workspace moved to another
    tenant since, posts nothing.
    """
    try:
        inst = await outlast(
            "slack destination",
            lambda: slack_access.destination(rt.db, rt.settings, job.tenant_id, job.user_id, config),
        )
    except slack_access.Refused as exc:
        raise DeliveryError(f"Slack {exc.field}: {exc.message}", retryable=False) from None
    if inst is None:
        raise DeliveryError("the SLACK override names no channel_id", retryable=False)
    web = client(rt, inst.bot_token)
    asked = " ".join(reply.content.split())[:80]
    prefix = f"_{mrkdwn.escape(asked)}_\n" if config.get("include_agent_info", True) else ""
    parts = chunks(prefix + mrkdwn.escape(reply.response), rt.settings.slack_message_chars)
    refs: list[str] = []
    try:
        for part in parts:
            response = await web.chat_postMessage(
                channel=config["channel_id"], text=part, thread_ts=refs[0] if refs else None
            )
            refs.append(str(response["ts"]))
    except SlackApiError as exc:
        raise _failure(exc) from None
    return ",".join(refs)


async def notice(ctx: dict[str, Any], raw: dict[str, Any]) -> str:
    """An ephemeral message to one Slack user (e.g. why their button press was refused), by their tenant's bot."""
    rt: DispatcherRuntime = ctx["rt"]
    n = delivery.SlackNotice.model_validate(raw)
    inst = await installations.of_tenant(rt.db, rt.settings, n.tenant_id, n.team_id)
    if inst is None:
        log.warning("Slack notice for a workspace not installed for its tenant", extra={"team_id": n.team_id})
        return "FAILED"
    try:
        await client(rt, inst.bot_token).chat_postEphemeral(channel=n.channel_id, user=n.slack_user_id, text=n.text)
    except SlackApiError as exc:
        log.warning("Slack notice not sent", extra={"team_id": n.team_id, "error": str(_failure(exc))})
        return "FAILED"
    return "SUCCESS"
