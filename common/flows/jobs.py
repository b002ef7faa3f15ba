"""The ARQ job that executes a flow run on the agent workers."""

from __future__ import annotations

from arq.connections import ArqRedis
from pydantic import BaseModel

from common.platform.keys import queue_name
from common.queue.enqueue import push

PROCESS_FLOW_RUN = "process_flow_run"


class RunJob(BaseModel):
    """The only argument of a `process_flow_run` job; one job id per run attempt."""

    run_id: str
    tenant_id: str
    attempt: int = 1
    correlation_id: str = ""


async def enqueue_run(pool: ArqRedis, feature: str, job: RunJob) -> bool:
    """True when queued now; False when this attempt's job already exists. Like requests, through
    `common.queue.enqueue.push`, which wakes an idle worker instead of leaving the run to its next poll."""
    return await push(
        pool, queue_name(feature), PROCESS_FLOW_RUN, f"flow:{job.run_id}:{job.attempt}", (job.model_dump(),)
    )
