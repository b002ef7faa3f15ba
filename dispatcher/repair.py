"""Deliveries a lost job or enqueue left undone, queued again from what Postgres says is owed.

A dispatcher job lives in Redis and its outcome in Postgres; when a process dies or a store is down
between the two, the row still says what is owed, and every dispatcher sweeps for it every EVERY_SECONDS:

- a completed request still `delivery_pending` a few seconds after it ended: its worker died after
  the ending, or Redis was down, before its `deliver_request` job was queued (or that job failed);
- an attempt still PENDING after its job's timeout: the job failed on a store outage, or was lost
  (not a Slack thread being followed, `follows`: a Slack request's or a Slack schedule's reply, whose
  follow job ARQ runs again if its dispatcher dies, and which may run for minutes through continuations);
- a RETRYING attempt whose next attempt was due a few seconds ago and never opened its row: the
  deferred job was lost.

Each job is queued under the id it first had, so one still queued or running is not doubled, and a job
that runs twice finds its rows (a closed attempt is not sent again): delivery stays at least once.
"""

from __future__ import annotations

import logging
from collections import Counter

from common.delivery import jobs as delivery
from common.delivery.jobs import DeliveryJob
from common.platform.metrics import DELIVERIES_REQUEUED
from common.requests.models import JobPayload
from dispatcher.runtime import DispatcherRuntime

log = logging.getLogger(__name__)

EVERY_SECONDS = 2.0
# How long a step owed is left to its own job first: a worker queues a delivery within milliseconds of
# the ending, and a deferred attempt starts when due unless the dispatchers are busy.
GRACE_SECONDS = 5.0
BATCH = 200

_UNQUEUED_REQUESTS = """
SELECT request_id::text, session_id::text, tenant_id, attempt, coalesce(correlation_id, '') AS correlation_id
  FROM request_logs
 WHERE delivery_pending AND completed_at < now() - make_interval(secs => $1)
 ORDER BY completed_at LIMIT $2
"""
# An attempt's job, rebuilt from its row: `next` is 0 for a stalled attempt (run it again), 1 for a lost
# retry (run the attempt after it).
_OWED_ATTEMPTS = """
SELECT o.next, d.request_id::text, d.session_id::text, d.tenant_id, d.user_id, d.integration_type AS channel,
       d.attempt + o.next AS attempt, coalesce(r.correlation_id, '') AS correlation_id,
       extract(epoch FROM r.completed_at)::float8 + $3 AS expires_at
  FROM (SELECT id, 0 AS next FROM delivery_logs
         WHERE status = 'PENDING' AND updated_at < now() - make_interval(secs => $1)
        UNION ALL
        SELECT id, 1 FROM delivery_logs WHERE retry_at < now() - make_interval(secs => $4)
         ORDER BY id LIMIT $2) o
  JOIN delivery_logs d ON d.id = o.id
  JOIN request_logs r ON r.request_id = d.request_id
 WHERE NOT d.follows
"""


async def sweep_once(rt: DispatcherRuntime, grace: float = GRACE_SECONDS) -> int:
    """Queue every delivery step owed and not queued; how many were queued (0 when all were in hand)."""
    settings = rt.settings
    requests = await rt.db.fetch(_UNQUEUED_REQUESTS, grace, BATCH)
    attempts = await rt.db.fetch(
        _OWED_ATTEMPTS, settings.delivery_job_timeout_seconds + grace, BATCH, settings.delivery_expiry_seconds, grace
    )
    queued: Counter[str] = Counter()
    for row in requests:
        if await delivery.enqueue_request(rt.queue, JobPayload(**dict(row))):
            queued["unqueued"] += 1
    for row in attempts:
        job = DeliveryJob(**{k: v for k, v in row.items() if k != "next"})
        if await delivery.enqueue_attempt(rt.queue, job):
            queued["retry" if row["next"] else "stalled"] += 1
    for reason, n in queued.items():
        DELIVERIES_REQUEUED.labels(reason).inc(n)
    if queued:
        log.warning("deliveries queued again", extra=dict(queued))
    return queued.total()
