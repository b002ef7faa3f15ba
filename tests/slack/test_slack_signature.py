"""Slack signature checks with an injected clock: the replay window is Slack's five minutes."""

from __future__ import annotations

import pytest
from slack_sdk.signature import Clock, SignatureVerifier

from api.errors import ApiError
from api.slack.verify import verify

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = 1_700_000_000.0


class At(Clock):
    def __init__(self, now: float) -> None:
        self.at = now

    def now(self) -> float:
        return self.at


def headers(body: bytes, ts: float = NOW, secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(ts))
    return {
        "x-slack-request-timestamp": stamp,
        "x-slack-signature": SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body) or "",
    }


def test_valid_within_the_window() -> None:
    body = b'{"type":"event_callback"}'
    verify(body, headers(body), ["other-secret", SECRET], At(NOW + 299))


@pytest.mark.parametrize(
    ("body", "hdrs", "clock"),
    [
        (b"x", headers(b"x"), At(NOW + 301)),  # stale
        (b"x", headers(b"x"), At(NOW - 301)),  # from the future
        (b"y", headers(b"x"), At(NOW)),  # body changed
        (b"x", headers(b"x", secret="nope"), At(NOW)),  # wrong secret
        (b"x", {}, At(NOW)),  # unsigned
        (b"x", {**headers(b"x"), "x-slack-request-timestamp": "soon"}, At(NOW)),  # not a number
    ],
)
def test_rejected(body: bytes, hdrs: dict[str, str], clock: Clock) -> None:
    with pytest.raises(ApiError) as err:
        verify(body, hdrs, [SECRET], clock)
    assert err.value.status == 401


def test_unconfigured_gateway_rejects() -> None:
    with pytest.raises(ApiError):
        verify(b"x", headers(b"x"), [], At(NOW))
