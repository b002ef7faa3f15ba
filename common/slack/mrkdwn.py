"""Text for Slack's mrkdwn: what users and models wrote is escaped, so only relaygate builds mentions and links.

Slack reads `<...>` as a mention (`<@U1>`, `<!channel>`), a link (`<https://x|label>`) or a
channel, and asks senders to escape exactly `&`, `<` and `>` in any other text.
"""

from __future__ import annotations

import re

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_LONGEST_ENTITY = len("&amp;")
_SLACK_ID = re.compile(r"[A-Za-z0-9]{2,40}")


def escape(text: str) -> str:
    """`text` shown as written: no mention, link or broadcast can come out of it."""
    return text.translate(_ESCAPES)


def mention(user_id: str) -> str:
    """`<@user_id>` for a well-formed Slack user id, else nothing (an id never carries markup)."""
    return f"<@{user_id}>" if _SLACK_ID.fullmatch(user_id) else ""


def safe_cut(text: str, at: int) -> int:
    """`at`, or the start of the escape sequence it would split (a cut never leaves half of `&amp;`)."""
    start = text.rfind("&", max(0, at - _LONGEST_ENTITY + 1), at)
    return start if start > 0 and ";" not in text[start:at] else at


def clip(text: str, size: int) -> str:
    """At most `size` characters of escaped `text`, cut outside any escape sequence."""
    return text if len(text) <= size else text[: safe_cut(text, size)]
