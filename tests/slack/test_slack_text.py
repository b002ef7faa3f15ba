"""Slack text: what users and models wrote is escaped for mrkdwn; only relaygate adds mentions and formatting."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from common.delivery.jobs import SlackTarget
from common.platform.settings import Settings
from common.slack import mrkdwn
from dispatcher.channels.slack import Message, Poster, chunks

HOSTILE = "hi <!channel> <https://evil.example|your bank> & <@U999>"
ESCAPED = "hi &lt;!channel&gt; &lt;https://evil.example|your bank&gt; &amp; &lt;@U999&gt;"


def message(config: dict[str, Any] | None = None, user: str = "U123") -> Message:
    return Message(
        target=SlackTarget(team_id="T1", channel_id="C1", slack_user_id=user), config=config or {}, request_id="r1"
    )


def test_escape() -> None:
    assert mrkdwn.escape(HOSTILE) == ESCAPED
    assert mrkdwn.escape("*bold* _it_") == "*bold* _it_"  # Slack's rule: only &, < and >


@pytest.mark.parametrize("status", [None, "completed", "cancelled"])
def test_the_reply_is_escaped_whatever_its_state(status: str | None) -> None:
    msg = message({"mention_user": True})
    msg.text, msg.status = HOSTILE, status
    body = msg.body(3500)
    assert body.startswith("<@U123> ") and ESCAPED in body and "<!channel>" not in body


def test_errors_and_agent_names_are_escaped() -> None:
    msg = message()
    msg.status, msg.error, msg.agent_id = "failed", "model said <!here>", "<!everyone>"
    assert msg.body(100).endswith("model said &lt;!here&gt;")
    msg.status = "completed"
    assert "<!everyone>" not in str(msg.blocks("x")) and "&lt;!everyone&gt;" in str(msg.blocks("x"))


def test_a_malformed_user_id_is_never_a_mention() -> None:
    msg = message({"mention_user": True}, user="U1> <!channel")
    msg.text = "ok"
    assert msg.body(100) == "ok"
    msg.status = "completed"
    assert msg.body(100) == "ok"


def test_cuts_never_split_an_escape() -> None:
    text = mrkdwn.escape("<" * 40)
    for size in range(5, 30):
        clipped = mrkdwn.clip(text, size)
        assert len(clipped) <= size and clipped.endswith("&lt;") and text.startswith(clipped)
        parts = chunks(text, size)
        assert "".join(parts) == text and all(len(p) <= size and p.endswith("&lt;") for p in parts)


class FakeStream:
    """What Poster needs of slack-sdk's AsyncChatStream: the markdown it is given."""

    ts = None

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def append(self, *, markdown_text: str) -> None:
        self.sent.append(markdown_text)

    async def stop(self, *, markdown_text: str | None = None, blocks: Any = None) -> None:
        self.sent.append(markdown_text or "")


async def test_natively_streamed_text_is_escaped_too() -> None:
    stream = FakeStream()

    class Web:
        async def chat_stream(self, **_: Any) -> FakeStream:
            return stream

    msg = Message(
        target=SlackTarget(team_id="T1", channel_id="C1", thread_ts="1.1", slack_user_id="U1"),
        config={},
        request_id="r1",
    )
    poster = Poster(SimpleNamespace(settings=Settings(slack_native_streaming=True)), Web(), msg, "d1")  # type: ignore[arg-type]
    assert poster.native
    msg.text = HOSTILE
    await poster.show()
    msg.text, msg.status = HOSTILE + " <!here>", "completed"
    await poster.show(final=True)
    assert "".join(stream.sent) == mrkdwn.escape(msg.text)
