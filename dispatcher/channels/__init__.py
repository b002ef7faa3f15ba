"""One module per delivery channel; each sends one reply and raises DeliveryError when it cannot."""

from __future__ import annotations

from dataclasses import dataclass


class DeliveryError(Exception):
    """A failed attempt. `retryable` attempts are tried again; `retry_after` is the receiver's wish."""

    def __init__(
        self, message: str, *, retryable: bool = True, retry_after: float | None = None, disable: bool = False
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.disable = disable


@dataclass(frozen=True)
class Reply:
    """A finished request as channels see it."""

    request_id: str
    session_id: str
    tenant_id: str
    user_id: str
    content: str
    response: str
    agent_id: str | None
    attempt: int
    completed_at: float = 0.0  # epoch seconds; a delivery expires DELIVERY_EXPIRY_SECONDS after it


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header given in seconds (HTTP dates are treated as absent)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
