"""SMS: a Twilio-compatible Messages API (form POST, basic auth); long replies are sent in parts."""

from __future__ import annotations

from typing import Any

import httpx

from common.platform.settings import Settings
from dispatcher.channels import DeliveryError, Reply, retry_after


def parts(text: str, size: int) -> list[str]:
    """Split at whitespace where possible, never over `size` characters."""
    out: list[str] = []
    while len(text) > size:
        cut = text.rfind(" ", 0, size)
        cut = cut if cut > size // 2 else size
        out.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [*out, text] if text else out


async def send(http: httpx.AsyncClient, settings: Settings, config: dict[str, Any], reply: Reply) -> str | None:
    if not settings.sms_api_url or not settings.sms_account_sid:
        raise DeliveryError("SMS is not configured (SMS_API_URL, SMS_ACCOUNT_SID)", retryable=False)
    url = f"{settings.sms_api_url.rstrip('/')}/2010-04-01/Accounts/{settings.sms_account_sid}/Messages.json"
    auth = (settings.sms_account_sid, settings.sms_auth_token.get_secret_value())
    sids: list[str] = []
    for text in parts(reply.response, settings.sms_max_chars):
        try:
            response = await http.post(
                url, auth=auth, data={"To": config["phone_number"], "From": settings.sms_from, "Body": text}
            )
        except httpx.HTTPError as exc:
            raise DeliveryError(f"SMS API unreachable: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise DeliveryError(
                f"SMS API answered {response.status_code}", retry_after=retry_after(response.headers.get("retry-after"))
            )
        if not response.is_success:
            raise DeliveryError(f"SMS API answered {response.status_code}", retryable=False)
        sids.append(str(response.json().get("sid", "")))
    return ",".join(sids)[:500]
