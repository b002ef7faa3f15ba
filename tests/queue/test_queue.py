"""The one-round-trip enqueue writes jobs exactly as ARQ reads them, once per job id."""

from __future__ import annotations

import uuid

from arq.constants import job_key_prefix
from arq.jobs import deserialize_job

from common.platform.keys import queue_name
from common.queue import enqueue as queue
from common.requests.models import JobPayload
from tests.conftest import Infra


async def test_enqueue_is_idempotent_and_arq_compatible(infra: Infra) -> None:
    pool = await queue.connect(infra.redis_url)
    try:
        payload = JobPayload(request_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()), tenant_id="t", attempt=2)
        feature = f"test-{uuid.uuid4().hex[:6]}"
        assert await queue.enqueue(pool, feature, payload) is True
        assert await queue.enqueue(pool, feature, payload) is False
        jid = f"{payload.request_id}:2"
        assert await pool.zrange(queue_name(feature), 0, -1) == [jid.encode()]
        job = deserialize_job(await pool.get(job_key_prefix + jid))
        assert job.function == "process_request" and job.args == (payload.model_dump(),)
        assert 0 < await pool.pttl(job_key_prefix + jid) <= pool.expires_extra_ms
    finally:
        await pool.aclose()
