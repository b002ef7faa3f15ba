"""EMAIL and SMS destinations are used only once verified: saving one sends a code through the channel itself
(the dispatcher's job, run in-process here against a local SMTP server and a Twilio-compatible fake), and
until the code comes back every delivery there is refused with its reason in the delivery log."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from common.delivery.jobs import DeliveryJob
from common.delivery.verification import VerificationJob
from common.platform.settings import Settings
from tests.conftest import Stack, settings_for, sql
from tests.fakes.http_receiver import Receiver, sms_form
from tests.support.delivery import (
    Mailbox,
    ask,
    code_in,
    deliver_now,
    deliveries,
    message_of,
    send_code_now,
    smtp_port,
    smtp_server,
    verify,
)
from tests.support.streams import wait_status

SMS_PATH = "/2010-04-01/Accounts/AC9/Messages.json"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[int, Mailbox, Receiver]]:
    controller, box = smtp_server()
    receiver = Receiver().start()
    try:
        yield smtp_port(controller), box, receiver
    finally:
        receiver.stop()
        controller.stop()


def dispatcher_settings(stack: Stack, servers: tuple[int, Mailbox, Receiver]) -> Settings:
    port, _, receiver = servers
    return settings_for(
        stack.infra,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_starttls=False,
        smtp_from="relaygate@test.local",
        sms_api_url=receiver.base_url,
        sms_account_sid="AC9",
        sms_auth_token="token",
        sms_from="+15550001111",
    )


def completed(c: Any) -> DeliveryJob:
    accepted = ask(c, "deliver me")
    assert wait_status(c, accepted["request_id"], {"completed"}, 60)["status"] == "completed"
    return DeliveryJob(
        request_id=accepted["request_id"], session_id=accepted["session_id"], tenant_id="", user_id="", channel="EMAIL"
    )


def mails_to(box: Mailbox, address: str) -> list[Any]:
    return [m for m in map(message_of, box.messages) if m["To"] == address]


def test_an_email_address_gets_replies_only_after_its_code_comes_back(
    stack: Stack, servers: tuple[int, Mailbox, Receiver]
) -> None:
    settings, box = dispatcher_settings(stack, servers), servers[1]
    uid, tenant = f"u-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    address = f"{uid}@example.com"
    with stack.client(uid, tenant) as c:
        saved = c.post(
            f"/api/v1/users/{uid}/integrations",
            json={"integration_type": "EMAIL", "retry_count": 0, "config": {"email_address": address}},
        )
        assert saved.status_code == 201 and saved.json()["verification"] == "pending", saved.text
        job = completed(c).model_copy(update={"tenant_id": tenant, "user_id": uid})
        assert deliver_now(settings, job) == "FAILED"
        (row,) = deliveries(c, uid)
        assert row["status"] == "FAILED" and f"EMAIL destination {address} is not verified" in row["error_message"]
        assert mails_to(box, address) == []

        assert verify(c, uid, "EMAIL", "000000").status_code == 422  # no code was sent yet
        assert (
            send_code_now(
                settings, VerificationJob(tenant_id=tenant, user_id=uid, channel="EMAIL", destination=address)
            )
            == "sent"
        )
        (mail,) = mails_to(box, address)
        assert mail["Subject"] == "relaygate: confirm this address"
        code = code_in(mail.get_payload(decode=True).decode())
        wrong = verify(c, uid, "EMAIL", "999999" if code != "999999" else "111111")
        assert wrong.status_code == 422 and wrong.json()["detail"] == "wrong code: 4 tries left", wrong.text
        stored = sql(stack, "SELECT code_hash FROM destination_verifications WHERE user_id = $1", uid)[0]["code_hash"]
        assert code not in stored
        right = verify(c, uid, "EMAIL", code)
        assert right.status_code == 200 and right.json() == {
            "integration_type": "EMAIL",
            "destination": address,
            "verified": True,
        }

        assert deliver_now(settings, completed(c).model_copy(update={"tenant_id": tenant, "user_id": uid})) == "SUCCESS"
        assert len(mails_to(box, address)) == 2
        again = c.put(f"/api/v1/users/{uid}/integrations/EMAIL", json={"config": {"format": "text"}})
        assert again.json()["verification"] == "verified"

    other, other_tenant = f"u-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    with stack.client(other, other_tenant) as c:
        theirs = c.post(
            f"/api/v1/users/{other}/integrations",
            json={"integration_type": "EMAIL", "config": {"email_address": address}},
        )
        assert theirs.json()["verification"] == "pending"  # confirmed by one user, not by anyone who names it
        assert verify(c, other, "EMAIL", code).status_code == 422


def test_a_phone_number_is_verified_by_text_and_codes_wear_out(
    stack: Stack, servers: tuple[int, Mailbox, Receiver]
) -> None:
    settings, receiver = dispatcher_settings(stack, servers), servers[2]
    uid, tenant = f"u-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    phone = "+1555" + str(uuid.uuid4().int)[:7]
    with stack.client(uid, tenant) as c:
        saved = c.post(
            f"/api/v1/users/{uid}/integrations",
            json={"integration_type": "SMS", "retry_count": 0, "config": {"phone_number": phone}},
        )
        assert saved.json()["verification"] == "pending", saved.text
        job = VerificationJob(tenant_id=tenant, user_id=uid, channel="SMS", destination=phone)
        assert send_code_now(settings, job) == "sent"
        (text,) = [sms_form(h) for h in receiver.on(SMS_PATH) if sms_form(h)["To"] == phone]
        code = code_in(text["Body"])
        wrong = "999999" if code != "999999" else "111111"
        for left in (4, 3, 2, 1, 0):
            assert verify(c, uid, "SMS", wrong).json()["detail"] == f"wrong code: {left} tries left"
        worn = verify(c, uid, "SMS", code)
        assert worn.status_code == 422 and "tried too often" in worn.json()["detail"]
        assert send_code_now(settings, job) == "sent"
        code = code_in([sms_form(h) for h in receiver.on(SMS_PATH) if sms_form(h)["To"] == phone][-1]["Body"])
        assert verify(c, uid, "SMS", code).status_code == 200
        delivery = completed(c).model_copy(update={"tenant_id": tenant, "user_id": uid, "channel": "SMS"})
        assert deliver_now(settings, delivery) == "SUCCESS"
        assert verify(c, uid, "WEBHOOK", code).status_code == 422
