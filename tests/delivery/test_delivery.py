"""The dispatcher end to end: a finished reply delivered to a webhook, email and SMS by a real
dispatcher process, against local servers speaking the real protocols (Standard Webhooks receiver,
aiosmtpd, a Twilio-compatible endpoint); every attempt a delivery_logs row and a stream event."""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Stack
from tests.fakes.http_receiver import Receiver, basic_auth, sms_form
from tests.fakes.tls import make_ca_and_cert
from tests.support.delivery import (
    Dispatchers,
    Mailbox,
    ask,
    code_in,
    deliver_now,
    deliveries,
    delivery_events,
    final,
    full_logs,
    message_of,
    smtp_port,
    smtp_server,
    user,
    verify,
    wait_for,
    webhook_override,
)

SMS_TOKEN = "sms-token-" + secrets.token_hex(8)
SMTP_PASSWORD = "smtp-pw-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def dispatchers(stack: Stack, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dispatchers]:
    ca_file, tls = make_ca_and_cert(tmp_path_factory.mktemp("tls"))
    controller, box = smtp_server(tls, ("relaygate", SMTP_PASSWORD))
    d = Dispatchers(
        stack,
        {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_port(controller)),
            "SMTP_STARTTLS": "true",
            "SMTP_CA_FILE": str(ca_file),
            "SMTP_USERNAME": "relaygate",
            "SMTP_PASSWORD": SMTP_PASSWORD,
            "SMTP_FROM": "relaygate@test.local",
            "SMS_API_URL": receiver.base_url,
            "SMS_ACCOUNT_SID": "AC123",
            "SMS_AUTH_TOKEN": SMS_TOKEN,
            "SMS_FROM": "+15550001111",
            "SMS_MAX_CHARS": "40",
            "DELIVERY_RETRY_DELAY_SCALE": "0.01",
            "DELIVERY_JOB_TIMEOUT_SECONDS": "3",
        },
    )
    d.mailbox = box  # type: ignore[attr-defined]
    d.start()
    try:
        yield d
    finally:
        d.stop()
        controller.stop()


def test_webhook_fails_twice_then_succeeds(stack: Stack, dispatchers: Dispatchers, receiver: Receiver) -> None:
    c, uid = user(stack)
    path = f"/hook/{uid}"
    secret = webhook_override(c, uid, receiver, path, retry_count=3)
    receiver.then(path, 503, (429, {"Retry-After": "0"}))
    accepted = ask(c)
    events = delivery_events(c, accepted, final)
    assert [(e["type"], e["data"]["status"], e["data"]["attempt"]) for e in events] == [
        ("delivery.failed", "RETRYING", 1),
        ("delivery.failed", "RETRYING", 2),
        ("delivery.succeeded", "SUCCESS", 3),
    ]
    rows = deliveries(c, uid)
    assert [(r["attempt"], r["status"]) for r in rows] == [(3, "SUCCESS"), (2, "RETRYING"), (1, "RETRYING")]
    assert {r["delivery_id"] for r in rows} == {e["data"]["delivery_id"] for e in events}
    hits = receiver.on(path)
    assert len(hits) == 3 and all(h.verified for h in hits)
    assert len({h.headers["webhook-id"] for h in hits}) == 1
    assert receiver.processed[path] == {hits[0].headers["webhook-id"]}
    body = httpx.Response(200, content=hits[-1].body).json()
    assert body["data"]["request_id"] == accepted["request_id"] and body["data"]["response"]
    assert secret not in full_logs(dispatchers.stack)


def test_permanent_failure_ends_failed_after_retry_count(
    stack: Stack, dispatchers: Dispatchers, receiver: Receiver
) -> None:
    c, uid = user(stack)
    path = f"/hook/{uid}"
    webhook_override(c, uid, receiver, path, retry_count=2)
    receiver.then(path, 500, 500, 500, 500)
    accepted = ask(c)
    events = delivery_events(c, accepted, final)
    assert [e["data"]["status"] for e in events] == ["RETRYING", "RETRYING", "FAILED"]
    assert "500" in events[-1]["data"]["detail"]
    assert [r["status"] for r in deliveries(c, uid)] == ["FAILED", "RETRYING", "RETRYING"]
    assert len(receiver.on(path)) == 3


def test_gone_webhook_is_disabled(stack: Stack, dispatchers: Dispatchers, receiver: Receiver) -> None:
    c, uid = user(stack)
    path = f"/hook/{uid}"
    webhook_override(c, uid, receiver, path, retry_count=3)
    receiver.then(path, 410)
    events = delivery_events(c, ask(c), final)
    assert [e["data"]["status"] for e in events] == ["FAILED"]
    configs = c.get(f"/api/v1/users/{uid}/integration-defaults").json()
    assert configs["user_overrides"]["WEBHOOK"]["enabled"] is False


def test_a_webhook_url_refused_at_send_time_is_never_called(
    stack: Stack, dispatchers: Dispatchers, receiver: Receiver
) -> None:
    """Saved while the allow-list named it; a dispatcher whose allow-list no longer does refuses it."""
    c, uid = user(stack)
    path = f"/hook/{uid}"
    webhook_override(c, uid, receiver, path, retry_count=3)
    with dispatchers.replaced_with(OUTBOUND_ALLOW_HOSTS=""):
        events = delivery_events(c, ask(c), final)
    assert [e["data"]["status"] for e in events] == ["FAILED"]  # not retried: it would be refused again
    assert events[0]["data"]["detail"].startswith("webhook URL refused: 127.0.0.1 is a loopback address")
    assert [(r["status"], r["error_message"]) for r in deliveries(c, uid)] == [("FAILED", events[0]["data"]["detail"])]
    assert receiver.on(path) == []


def test_email_html_and_text(stack: Stack, dispatchers: Dispatchers) -> None:
    box: Mailbox = dispatchers.mailbox  # type: ignore[attr-defined]
    sent: dict[str, Any] = {}
    for fmt in ("html", "text"):
        c, uid = user(stack)
        address = f"{uid}@example.com"
        r = c.post(
            f"/api/v1/users/{uid}/integrations",
            json={"integration_type": "EMAIL", "config": {"email_address": address, "format": fmt}},
        )
        assert r.status_code == 201 and r.json()["verification"] == "pending", r.text
        mail = wait_for(lambda a=address: next((m for m in map(message_of, box.messages) if m["To"] == a), None))
        assert verify(c, uid, "EMAIL", code_in(mail.get_payload(decode=True).decode())).status_code == 200
        accepted = ask(c, f"mail me as {fmt}")
        events = delivery_events(c, accepted, final)
        assert [e["data"]["status"] for e in events] == ["SUCCESS"]
        sent[fmt] = wait_for(lambda a=address: [m for m in map(message_of, box.messages) if m["To"] == a][1:])[0]
    html, text = sent["html"], sent["text"]
    assert html.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in html.get_payload()] == ["text/plain", "text/html"]
    assert "<html>" in html.get_payload()[1].get_payload(decode=True).decode()
    assert text.get_content_type() == "text/plain"
    assert text["From"] == "relaygate@test.local"
    assert SMTP_PASSWORD not in full_logs(stack)


def test_sms_long_reply_in_parts(stack: Stack, dispatchers: Dispatchers, receiver: Receiver) -> None:
    c, uid = user(stack)
    phone = "+1555" + str(uuid.uuid4().int)[:7]
    r = c.post(f"/api/v1/users/{uid}/integrations", json={"integration_type": "SMS", "config": {"phone_number": phone}})
    assert r.status_code == 201, r.text
    texts = "/2010-04-01/Accounts/AC123/Messages.json"

    def bodies() -> list[str]:
        return [sms_form(h)["Body"] for h in receiver.on(texts) if sms_form(h)["To"] == phone]

    codes = wait_for(lambda: bodies() if " ".join(bodies()).endswith("ignore this message.") else None)
    assert verify(c, uid, "SMS", code_in(" ".join(codes))).status_code == 200
    events = delivery_events(c, ask(c), final)
    assert [e["data"]["status"] for e in events] == ["SUCCESS"]
    hits = [h for h in receiver.on(texts) if sms_form(h)["To"] == phone][len(codes) :]
    assert len(hits) > 1
    assert all(len(sms_form(h)["Body"]) <= 40 and sms_form(h)["From"] == "+15550001111" for h in hits)
    assert basic_auth(hits[0]) == ("AC123", SMS_TOKEN)
    assert SMS_TOKEN not in full_logs(stack)


def test_dispatcher_killed_mid_delivery_delivers_once(
    stack: Stack, dispatchers: Dispatchers, receiver: Receiver
) -> None:
    c, uid = user(stack)
    path = f"/hook/{uid}"
    webhook_override(c, uid, receiver, path, retry_count=0)
    receiver.hold = threading.Event()
    try:
        accepted = ask(c)
        wait_for(lambda: receiver.on(path))
        dispatchers.kill()
    finally:
        receiver.hold.set()
        receiver.hold = None
    dispatchers.start()
    events = delivery_events(c, accepted, final)
    assert [e["data"]["status"] for e in events] == ["SUCCESS"]
    assert [r["status"] for r in deliveries(c, uid)] == ["SUCCESS"]
    hits = receiver.on(path)
    assert len(hits) == 2 and len({h.headers["webhook-id"] for h in hits}) == 1
    assert len(receiver.processed[path]) == 1


def test_test_channel_records_and_disabled_override_sends_nothing(
    stack: Stack, dispatchers: Dispatchers, receiver: Receiver
) -> None:
    c, uid = user(stack)
    assert c.post(f"/api/v1/users/{uid}/integrations", json={"integration_type": "TEST"}).status_code == 201
    path = f"/hook/{uid}"
    webhook_override(c, uid, receiver, path)
    assert c.put(f"/api/v1/users/{uid}/integrations/WEBHOOK", json={"enabled": False}).status_code == 200
    events = delivery_events(c, ask(c), final)
    assert [(e["data"]["channel"], e["data"]["status"]) for e in events] == [("TEST", "SUCCESS")]
    assert [(r["integration_type"], r["status"]) for r in deliveries(c, uid)] == [("TEST", "SUCCESS")]
    assert receiver.on(path) == []


def test_attempt_past_its_expiry_is_expired(stack: Stack) -> None:
    """Runs the dispatcher's job in-process against the real servers: an overdue attempt is not sent."""
    import time

    from common.delivery.jobs import DeliveryJob
    from tests.conftest import settings_for
    from tests.support.streams import wait_status

    c, uid = user(stack)
    accepted = ask(c)
    assert wait_status(c, accepted["request_id"], {"completed"})["status"] == "completed"
    tenant = c.get("/api/v1/me").json()["tenant_id"]

    job = DeliveryJob(
        request_id=accepted["request_id"],
        session_id=accepted["session_id"],
        tenant_id=tenant,
        user_id=uid,
        channel="TEST",
        expires_at=time.time() - 1,
    )
    assert deliver_now(settings_for(stack.infra), job) == "EXPIRED"
    assert [r["status"] for r in deliveries(c, uid)] == ["EXPIRED"]
    events = delivery_events(c, accepted, final)
    assert [(e["type"], e["data"]["status"]) for e in events] == [("delivery.failed", "EXPIRED")]
