"""Slack request signatures (`v0`, HMAC-SHA256 over the raw body, 5-minute window).

Checked before the body is used: only the workspace id is read first, to pick that workspace's secret.
"""

from __future__ import annotations

from collections.abc import Mapping

from slack_sdk.signature import Clock, SignatureVerifier

from api.errors import Unauthorized

WINDOW_SECONDS = 300  # SignatureVerifier accepts a timestamp this far either side of now


def verify(body: bytes, headers: Mapping[str, str], secrets: list[str], clock: Clock) -> None:
    """Raise 401 unless one of `secrets` signed this exact body within the replay window."""
    timestamp = headers.get("x-slack-request-timestamp", "")
    signature = headers.get("x-slack-signature", "")
    if not secrets:
        raise Unauthorized("Slack is not configured on this gateway")
    if not timestamp or not signature:
        raise Unauthorized("missing Slack signature headers")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise Unauthorized("invalid Slack request timestamp")
    for secret in secrets:
        if SignatureVerifier(secret, clock=clock).is_valid(body=body, timestamp=timestamp, signature=signature):
            return
    raise Unauthorized("invalid or expired Slack signature")


def seconds_valid(headers: Mapping[str, str], clock: Clock) -> int:
    """How much longer a verified request's timestamp stays inside the window (its replay claim lasts this long)."""
    return max(1, int(headers["x-slack-request-timestamp"]) + WINDOW_SECONDS + 1 - int(clock.now()))
