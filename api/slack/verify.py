"""Slack request signatures (`v0`, HMAC-SHA256 over the raw body, 5-minute window), checked before parsing."""

from __future__ import annotations

from collections.abc import Mapping

from slack_sdk.signature import Clock, SignatureVerifier

from api.errors import ApiError


def verify(body: bytes, headers: Mapping[str, str], secrets: list[str], clock: Clock) -> None:
    """Raise 401 unless one of `secrets` signed this exact body within the replay window."""
    timestamp = headers.get("x-slack-request-timestamp", "")
    signature = headers.get("x-slack-signature", "")
    if not secrets:
        raise ApiError(401, "Slack is not configured on this gateway")
    if not timestamp or not signature:
        raise ApiError(401, "missing Slack signature headers")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise ApiError(401, "invalid Slack request timestamp")
    for secret in secrets:
        if SignatureVerifier(secret, clock=clock).is_valid(body=body, timestamp=timestamp, signature=signature):
            return
    raise ApiError(401, "invalid or expired Slack signature")
