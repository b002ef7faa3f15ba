"""EMAIL delivery of hostile text: the dispatcher's job in-process against the real servers and a local SMTP server.

A line break in the request's text (the default subject) once crashed the job and left the attempt
PENDING forever; now the subject is one line, and any unexpected error is a failed attempt.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from common.delivery.jobs import DeliveryJob
from dispatcher.channels import email
from tests.conftest import Stack, settings_for, sql
from tests.support.delivery import (
    Mailbox,
    ask,
    deliver_now,
    deliveries,
    message_of,
    smtp_port,
    smtp_server,
    wait_for,
)
from tests.support.streams import wait_status


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[int, Mailbox]]:
    controller, box = smtp_server()
    try:
        yield smtp_port(controller), box
    finally:
        controller.stop()


def emailed_request(stack: Stack, c: httpx.Client, tenant: str, uid: str, content: str) -> dict[str, Any]:
    """A verified EMAIL override for `uid` (confirmed as test_destination_verification does it by mail) and one
    completed request of `content`."""
    r = c.post(
        f"/api/v1/users/{uid}/integrations",
        json={"integration_type": "EMAIL", "retry_count": 0, "config": {"email_address": f"{uid}@example.com"}},
    )
    assert r.status_code == 201, r.text
    sql(
        stack,
        "UPDATE destination_verifications SET verified_at = now() WHERE tenant_id = $1 AND user_id = $2",
        tenant,
        uid,
    )
    accepted = ask(c, content)
    assert wait_status(c, accepted["request_id"], {"completed"}, 60)["status"] == "completed"
    return accepted


def user() -> tuple[str, str]:
    return f"u-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"


def deliver_email(stack: Stack, port: int, tenant: str, uid: str, accepted: dict[str, Any]) -> str:
    settings = settings_for(
        stack.infra, smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False, smtp_from="relaygate@test.local"
    )
    return deliver_now(
        settings,
        DeliveryJob(
            request_id=accepted["request_id"],
            session_id=accepted["session_id"],
            tenant_id=tenant,
            user_id=uid,
            channel="EMAIL",
        ),
    )


def test_a_line_break_in_the_request_makes_a_one_line_subject(stack: Stack, smtp: tuple[int, Mailbox]) -> None:
    port, box = smtp
    uid, tenant = user()
    with stack.client(uid, tenant) as c:
        accepted = emailed_request(stack, c, tenant, uid, "first line\r\nBcc: victim@example.com\nthird")
        assert deliver_email(stack, port, tenant, uid, accepted) == "SUCCESS"
        sent = wait_for(
            lambda: next((m for m in map(message_of, box.messages) if m["To"] == f"{uid}@example.com"), None)
        )
        assert sent["Subject"] == "Reply to: first line Bcc: victim@example.com third"
        assert sent["Bcc"] is None
        assert [r["status"] for r in deliveries(c, uid)] == ["SUCCESS"]


def test_an_unexpected_send_error_is_a_failed_attempt(
    stack: Stack, smtp: tuple[int, Mailbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, _ = smtp

    async def broken(*args: Any) -> str:
        raise RuntimeError("something no channel foresaw, with a detail that stays in the process")

    monkeypatch.setattr(email, "send", broken)
    uid, tenant = user()
    with stack.client(uid, tenant) as c:
        accepted = emailed_request(stack, c, tenant, uid, "hello")
        assert deliver_email(stack, port, tenant, uid, accepted) == "FAILED"
        (row,) = deliveries(c, uid)
        assert row["status"] == "FAILED"
        assert row["error_message"] == "EMAIL delivery failed: unexpected RuntimeError"
