"""The ARQ job that executes a flow run on the agent workers."""

from __future__ import annotations

from arq.connections import ArqRedis
from pydantic import BaseModel

from common.keys import queue_name

PROCESS_FLOW_RUN = "process_flow_run"


class RunJob(BaseModel):
    """The only argument of a `process_flow_run` job; one job id per run attempt."""

    run_id: str
    tenant_id: str
    attempt: int = 1
    correlation_id: str = ""


async def enqueue_run(pool: ArqRedis, feature: str, job: RunJob) -> bool:
    """True when queued now; False when this attempt's job already exists."""
    queued = await pool.enqueue_job(PROCESS_FLOW_RUN, job.model_dump(), _job_id=f"flow:{job.run_id}:{job.attempt}",
                                    _queue_name=queue_name(feature))
    return queued is not None
