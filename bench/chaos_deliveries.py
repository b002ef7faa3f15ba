"""The chaos suite's deliveries: a share of the session clients' users deliver their replies to a
webhook receiver in this process, through the dispatchers the cluster runs (and kills).

The receiver checks each POST's Standard Webhooks signature and answers 503 to a share of them, so
retries happen too. After the run, for every completed request of those users: exactly one SUCCESS
attempt, at least one signed POST carrying its stored reply (more than one is allowed: delivery is
at least once, and the repeats carry the same `webhook-id`), and nothing left owed; and no delivery
at all for a request that did not complete.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from chaos_clients import SessionClient
from chaos_report import Anomalies, spread
from chaos_verify import fetch
from standardwebhooks import Webhook, WebhookVerificationError

from cli.dev.embedded import free_port


@dataclass
class Hit:
    webhook_id: str
    response: str
    verified: bool
    answered: int


@dataclass
class Receiver:
    """A Standard Webhooks receiver on loopback: `/hook/<user>`, one secret per user."""

    fail_share: float
    seed: int
    secrets: dict[str, str] = field(default_factory=dict)
    hits: dict[str, list[Hit]] = field(default_factory=lambda: defaultdict(list))  # request id -> POSTs
    answered: Counter[int] = field(default_factory=Counter)
    port: int = 0
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def secret_for(self, user: str) -> str:
        self.secrets[user] = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        return self.secrets[user]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{user}", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, user: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{user}"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        secret = self.secrets.get(request.match_info["user"], "")
        try:
            Webhook(secret).verify(body, dict(request.headers))
            verified = True
        except WebhookVerificationError:
            verified = False
        data = orjson.loads(body).get("data", {})
        status = 503 if self.rng.random() < self.fail_share else 200
        webhook_id = request.headers.get("webhook-id", "")
        self.hits[data.get("request_id", "")].append(Hit(webhook_id, data.get("response", ""), verified, status))
        self.answered[status] += 1
        return web.Response(status=status)


async def subscribe(users: dict[str, SessionClient], receiver: Receiver) -> None:
    """Each user (through its client, and a random live gateway) sends its replies to the receiver."""

    async def one(user: str, client: SessionClient) -> None:
        body = {
            "integration_type": "WEBHOOK",
            "retry_count": 8,
            "retry_delay_seconds": 1,
            "config": {"url": receiver.url(user), "secret": receiver.secret_for(user)},
        }
        await client.send("integration", f"/api/v1/users/{user}/integrations", (201,), body=body)

    await asyncio.gather(*(one(user, client) for user, client in users.items()))


async def owed(database_url: str, tenant: str) -> int:
    """Delivery steps not yet done: replies not yet fanned out, attempts open, retries not yet run."""
    rows = await fetch(
        database_url,
        """
        SELECT (SELECT count(*) FROM request_logs WHERE tenant_id = $1 AND delivery_pending)
             + (SELECT count(*) FROM delivery_logs
                 WHERE tenant_id = $1 AND (status = 'PENDING' OR retry_at IS NOT NULL))
        """,
        tenant,
    )
    return int(rows[0][0])


async def verify(
    anomalies: Anomalies, database_url: str, tenant: str, users: set[str], receiver: Receiver
) -> dict[str, Any]:
    """Every completed request of `users` delivered once in the log and at least once at the receiver."""
    requests = await fetch(
        database_url,
        "SELECT request_id::text AS request_id, user_id, status, response_content, delivery_pending,"
        " extract(epoch FROM completed_at)::float8 AS completed_at FROM request_logs WHERE tenant_id = $1",
        tenant,
    )
    attempts: dict[str, list[asyncpg.Record]] = defaultdict(list)
    logged = await fetch(
        database_url,
        "SELECT request_id::text AS request_id, attempt, status, retry_at IS NOT NULL AS due,"
        " extract(epoch FROM updated_at)::float8 AS updated_at FROM delivery_logs WHERE tenant_id = $1"
        " ORDER BY attempt",
        tenant,
    )
    for row in logged:
        attempts[row["request_id"]].append(row)
    statuses: Counter[str] = Counter()
    latency: list[float] = []
    delivered = repeats = 0
    for row in requests:
        rid = row["request_id"]
        tried = attempts.get(rid, [])
        statuses.update(a["status"] for a in tried)
        steps = [f"{a['attempt']}:{a['status']}" for a in tried]
        what = {"request_id": rid, "status": row["status"], "attempts": steps}
        if row["delivery_pending"] or any(a["status"] == "PENDING" or a["due"] for a in tried):
            anomalies.add("delivery_owed", **what, pending=row["delivery_pending"])
        if row["status"] != "completed" or row["user_id"] not in users:
            if tried or receiver.hits.get(rid):
                anomalies.add("delivery_unwanted", **what, user=row["user_id"])
            continue
        successes = [a for a in tried if a["status"] == "SUCCESS"]
        hits = receiver.hits.get(rid, [])
        if len(successes) != 1:
            anomalies.add("delivery_not_once_in_log", **what)
        if not any(h.answered == 200 for h in hits):
            anomalies.add("delivery_not_received", **what, posts=len(hits))
            continue
        if any(not h.verified for h in hits):
            anomalies.add("delivery_bad_signature", **what)
        if any(h.response != row["response_content"] for h in hits):
            anomalies.add("delivery_wrong_reply", **what)
        if len({h.webhook_id for h in hits}) != 1:
            anomalies.add("delivery_webhook_id_changed", **what, ids=sorted({h.webhook_id for h in hits}))
        delivered += 1
        repeats += sum(h.answered == 200 for h in hits) - 1
        if successes:
            latency.append(successes[0]["updated_at"] - row["completed_at"])
    return {
        "delivered": delivered,
        "users": len(users),
        "attempts_by_status": dict(statuses),
        "posts_received": sum(len(h) for h in receiver.hits.values()),
        "posts_answered": {str(k): v for k, v in receiver.answered.items()},
        "repeated_after_success": repeats,
        "completed_to_success": spread(latency),
    }
