"""An email subject is one header line: no CR/LF from the request's text or the user's config, and capped."""

from __future__ import annotations

import pytest

from common.platform.settings import Settings
from dispatcher.channels import Reply
from dispatcher.channels.email import MAX_SUBJECT, build, subject


def reply(content: str) -> Reply:
    return Reply(
        request_id="r1",
        session_id="s1",
        tenant_id="t",
        user_id="u",
        content=content,
        response="answer",
        agent_id="a",
        attempt=1,
    )


@pytest.mark.parametrize("content", ["line one\nline two", "a\r\nBcc: x@y.z", "tab\there\u2028sep", "\x1b[31mred"])
def test_the_request_text_becomes_one_line(content: str) -> None:
    message = build(Settings(smtp_from="relaygate@test.local"), {"email_address": "a@b.co"}, reply(content))
    value = str(message["Subject"])
    assert value.startswith("Reply to: ") and not any(c in value for c in "\r\n\x1b\u2028")
    assert "Bcc" not in message


def test_a_configured_subject_is_flattened_and_capped() -> None:
    assert subject({"subject": "Hello\r\nthere"}, reply("x")) == "Hello there"
    long = subject({"subject": "w" * 500}, reply("x"))
    assert len(long) == MAX_SUBJECT and long.endswith("…")
    assert subject({"subject": " \n "}, reply("fallback")) == "Reply to: fallback"
