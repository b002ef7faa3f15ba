"""Verified EMAIL and SMS destinations: relaygate sends a user's replies to an address or number the user
chose only after a code it sent there came back (`POST .../integrations/{channel}/verify`), so nobody can
make it mail or text a stranger. The operator's default destinations need no code.

Saving an override asks for a code (`request`); a dispatcher makes one, keeps its hash and sends it
through the channel itself (`issue`, dispatcher.verification); `confirm` checks what the user read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from arq.connections import ArqRedis
from pydantic import BaseModel

from common.delivery import configs as channel_configs
from common.delivery.configs import Channel
from common.platform.keys import dispatcher_queue
from common.queue import enqueue as queue

SEND_VERIFICATION = "send_verification"
FIELDS: dict[Channel, str] = {"EMAIL": "email_address", "SMS": "phone_number"}
CODE_SECONDS = 3600
RESEND_SECONDS = 60  # a code is sent at most this often per destination
MAX_TRIES = 5  # wrong codes before a new one must be sent

Status = Literal["verified", "pending"]


class VerificationJob(BaseModel):
    """Send a code to `destination` (a dispatcher job)."""

    tenant_id: str
    user_id: str
    channel: Channel
    destination: str


@dataclass(frozen=True)
class Confirmation:
    """The outcome of a code given back: `verified`, or why not (`problem`, shown to the user)."""

    verified: bool
    destination: str | None
    problem: str | None = None


def destination(channel: Channel, config: dict[str, Any]) -> str | None:
    """The address or number a config sends to, for the channels that need verifying."""
    name = FIELDS.get(channel)
    value = config.get(name) if name else None
    return str(value) if value else None


def _digest(job: VerificationJob, code: str) -> str:
    return hashlib.sha256(
        f"{job.tenant_id}\n{job.user_id}\n{job.channel}\n{job.destination}\n{code}".encode()
    ).hexdigest()


async def _operator_chosen(db: asyncpg.Pool | asyncpg.Connection, channel: Channel, to: str) -> bool:
    return destination(channel, await channel_configs.default_config(db, channel)) == to


async def allowed(
    db: asyncpg.Pool | asyncpg.Connection, tenant_id: str, user_id: str, channel: Channel, to: str
) -> bool:
    """Whether replies may go to `to`: the operator's default, or confirmed by this user."""
    if await _operator_chosen(db, channel, to):
        return True
    return bool(
        await db.fetchval(
            "SELECT 1 FROM destination_verifications WHERE tenant_id = $1 AND user_id = $2 AND channel = $3"
            " AND destination = $4 AND verified_at IS NOT NULL",
            tenant_id,
            user_id,
            channel,
            to,
        )
    )


async def request(db: asyncpg.Pool, pool: ArqRedis, tenant_id: str, user_id: str, channel: Channel, to: str) -> Status:
    """A destination was saved: `verified` when it may be used already, else a code is on its way
    (unless one was sent within RESEND_SECONDS) and it is `pending`."""
    if await allowed(db, tenant_id, user_id, channel, to):
        return "verified"
    due = await db.fetchval(
        """
        INSERT INTO destination_verifications (tenant_id, user_id, channel, destination)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (tenant_id, user_id, channel, destination) DO UPDATE SET tries = destination_verifications.tries
        RETURNING sent_at IS NULL OR sent_at < now() - make_interval(secs => $5)
        """,
        tenant_id,
        user_id,
        channel,
        to,
        RESEND_SECONDS,
    )
    if due:
        job = VerificationJob(tenant_id=tenant_id, user_id=user_id, channel=channel, destination=to)
        await queue.push(pool, dispatcher_queue(), SEND_VERIFICATION, f"verify:{uuid.uuid4()}", (job.model_dump(),))
    return "pending"


async def issue(db: asyncpg.Pool, job: VerificationJob) -> str | None:
    """A new code for the job's destination, its hash stored (None: verified already, or no longer asked for)."""
    code = f"{secrets.randbelow(1_000_000):06d}"
    stored = await db.fetchval(
        """
        UPDATE destination_verifications
           SET code_hash = $5, sent_at = now(), expires_at = now() + make_interval(secs => $6), tries = 0
         WHERE tenant_id = $1 AND user_id = $2 AND channel = $3 AND destination = $4 AND verified_at IS NULL
        RETURNING 1
        """,
        job.tenant_id,
        job.user_id,
        job.channel,
        job.destination,
        _digest(job, code),
        CODE_SECONDS,
    )
    return code if stored else None


async def confirm(
    db: asyncpg.Pool, tenant_id: str, user_id: str, channel: Channel, to: str | None, code: str
) -> Confirmation:
    """Check a code for the destination the user's override names now."""
    if to is None:
        return Confirmation(False, None, f"the {channel} override names no destination")
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT code_hash, expires_at < now() AS expired, tries, verified_at FROM destination_verifications"
            " WHERE tenant_id = $1 AND user_id = $2 AND channel = $3 AND destination = $4 FOR UPDATE",
            tenant_id,
            user_id,
            channel,
            to,
        )
        if row is not None and row["verified_at"] is not None:
            return Confirmation(True, to)
        if row is None or row["code_hash"] is None:
            return Confirmation(False, to, f"no code was sent to {to} yet: save the override to send one")
        if row["expired"] or row["tries"] >= MAX_TRIES:
            return Confirmation(
                False, to, "the code expired or was tried too often: save the override again (PUT) for a new one"
            )
        job = VerificationJob(tenant_id=tenant_id, user_id=user_id, channel=channel, destination=to)
        if not hmac.compare_digest(row["code_hash"], _digest(job, code.strip())):
            await conn.execute(
                "UPDATE destination_verifications SET tries = tries + 1 WHERE tenant_id = $1"
                " AND user_id = $2 AND channel = $3 AND destination = $4",
                tenant_id,
                user_id,
                channel,
                to,
            )
            return Confirmation(False, to, f"wrong code: {MAX_TRIES - row['tries'] - 1} tries left")
        await conn.execute(
            "UPDATE destination_verifications SET verified_at = now(), code_hash = NULL"
            " WHERE tenant_id = $1 AND user_id = $2 AND channel = $3 AND destination = $4",
            tenant_id,
            user_id,
            channel,
            to,
        )
    return Confirmation(True, to)
