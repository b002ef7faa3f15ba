"""The dispatcher's `send_verification` job: a new code to a destination a user saved, sent through the
channel itself (common.delivery.verification); a failed send is retried, then logged, and saving again resends."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from arq import Retry

from common.delivery import verification
from common.delivery.verification import CODE_SECONDS, VerificationJob
from dispatcher.channels import DeliveryError, Reply, email, sms
from dispatcher.runtime import DispatcherRuntime

log = logging.getLogger(__name__)

SUBJECT = "relaygate: confirm this address"


def message(job: VerificationJob, code: str) -> Reply:
    text = (
        f"Your relaygate confirmation code is {code}. It is valid for {CODE_SECONDS // 60} minutes. Someone"
        f" asked for relaygate replies to be sent here; if it was not you, ignore this message."
    )
    return Reply(
        request_id=f"verify-{uuid.uuid4()}",
        session_id="",
        tenant_id=job.tenant_id,
        user_id=job.user_id,
        content=SUBJECT,
        response=text,
        agent_id=None,
        attempt=1,
    )


async def send_verification(ctx: dict[str, Any], raw: dict[str, Any]) -> str:
    rt: DispatcherRuntime = ctx["rt"]
    job = VerificationJob.model_validate(raw)
    code = await verification.issue(rt.db, job)
    if code is None:
        return "not needed"
    try:
        if job.channel == "EMAIL":
            config = {
                "email_address": job.destination,
                "format": "text",
                "include_agent_info": False,
                "subject": SUBJECT,
            }
            await email.send(rt.settings, config, message(job, code))
        else:
            await sms.send(rt.http, rt.settings, {"phone_number": job.destination}, message(job, code))
    except DeliveryError as exc:
        log.warning(
            "sending a confirmation code failed",
            extra={"channel": job.channel, "error": str(exc), "retryable": exc.retryable},
        )
        if exc.retryable and ctx.get("job_try", 1) < 3:
            raise Retry(defer=exc.retry_after or 5) from None
        return "failed"
    log.info("confirmation code sent", extra={"channel": job.channel, "user_id": job.user_id})
    return "sent"
