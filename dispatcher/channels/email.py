"""EMAIL: the reply as html (with a text part) or text, over SMTP with aiosmtplib."""

from __future__ import annotations

import html
from email.message import EmailMessage
from typing import Any

import aiosmtplib

from common.platform.settings import Settings
from dispatcher.channels import DeliveryError, Reply

MAX_SUBJECT = 200


def one_line(text: str, limit: int) -> str:
    """`text` as a header value: control characters and line breaks become single spaces, at most `limit` long."""
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def subject(config: dict[str, Any], reply: Reply) -> str:
    """The configured subject, else one from the request's text; never a line break (headers could not hold it)."""
    return one_line(config.get("subject") or "", MAX_SUBJECT) or f"Reply to: {one_line(reply.content, 60)}"


def build(settings: Settings, config: dict[str, Any], reply: Reply) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = config["email_address"]
    message["Subject"] = subject(config, reply)
    message["Message-ID"] = f"<{reply.request_id}@relaygate>"
    footer = f"\n\n-- {reply.agent_id}" if config.get("include_agent_info", True) and reply.agent_id else ""
    message.set_content(reply.response + footer)
    if config.get("format", "html") == "html":
        body = html.escape(reply.response).replace("\n", "<br>\n")
        agent = f"<p><small>{html.escape(footer.strip())}</small></p>" if footer else ""
        message.add_alternative(f"<html><body><p>{body}</p>{agent}</body></html>", subtype="html")
    return message


async def send(settings: Settings, config: dict[str, Any], reply: Reply) -> str | None:
    if not settings.smtp_host:
        raise DeliveryError("SMTP is not configured (SMTP_HOST)", retryable=False)
    message = build(settings, config, reply)
    try:
        await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username or None,
            password=settings.smtp_password.get_secret_value() or None,
            start_tls=settings.smtp_starttls,
            timeout=settings.smtp_timeout_seconds,
            cert_bundle=settings.smtp_ca_file or None,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"recipient refused: {len(exc.recipients)} address(es)", retryable=False) from None
    except aiosmtplib.SMTPResponseException as exc:
        raise DeliveryError(f"SMTP {exc.code}: {exc.message[:200]}", retryable=exc.code < 500) from None
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"SMTP unavailable: {type(exc).__name__}") from None
    return str(message["Message-ID"])
