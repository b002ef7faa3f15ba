"""Starting, reading, listing and cancelling flow runs (every entry point calls `start`)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from api.deps import Gateway
from api.errors import Conflict, Forbidden, NotFound, PolicyRefused, refused
from api.flows import service as flows
from api.flows.runs.schemas import RunBody
from common.flows import admission
from common.flows.jobs import RunJob, enqueue_run
from common.flows.policies import Evaluation, PolicyContext, PolicyViolation, configured_engine
from common.flows.runs import ACTIVE, DOC_COLUMNS, PENDING, RunStore, status_doc
from common.platform import sink
from common.platform.credentials import Principal
from common.platform.keys import run_cancel_key

log = logging.getLogger(__name__)


@dataclass
class Started:
    run_id: str
    correlation_id: str
    replayed: bool = False


async def _replay(gw: Gateway, tenant_id: str, request_id: str) -> Started | None:
    row = await gw.db.fetchrow(
        "SELECT run_id, correlation_id FROM flow_runs_audit WHERE tenant_id = $1 AND request_id = $2",
        tenant_id,
        request_id,
    )
    return Started(row["run_id"], row["correlation_id"], replayed=True) if row else None


async def start(
    gw: Gateway, who: Principal, body: RunBody, *, correlation_id: str, trigger: dict[str, Any] | None = None
) -> Started:
    """Validate, apply the policies, record the audit row and queue the run; idempotent on `request_id`."""
    if body.tenant_id != who.tenant_id:
        raise Forbidden(f"TenantIsolationPolicy: the token's tenant may not start runs for {body.tenant_id!r}")
    if body.request_id and (replay := await _replay(gw, who.tenant_id, body.request_id)):
        return replay
    policies = configured_engine(gw.settings)
    if body.flow_definition is not None:
        raw, source = {"id": body.flow_id, **body.flow_definition}, "request"
    else:
        registered = await flows.get(gw, who, body.flow_id, body.version)
        raw, source = registered["definition"], f"registry:v{registered['version']}"
    flow = await flows.checked(gw, raw, None, body.flow_id)  # tenant isolation is the policy engine's to judge
    try:
        evaluated = policies.evaluate(flow, PolicyContext(who.tenant_id, who.user_id, gw.settings))
    except PolicyViolation as exc:
        raise PolicyRefused(str(exc)) from None
    run_id = str(uuid.uuid4())
    runs = RunStore.of(gw)
    await _admit(gw, who, run_id)
    try:
        row = await _record(gw, who, body, evaluated, run_id, source, correlation_id, trigger)
    except BaseException:
        await _release(gw, who, run_id)
        raise
    if row is None:  # a concurrent call with the same request_id won
        await _release(gw, who, run_id)
        replay = await _replay(gw, who.tenant_id, body.request_id or "")
        assert replay is not None
        return replay
    try:
        await runs.cache_put(row)
    except Exception as exc:  # Postgres holds the run; a cache miss reads it from there
        log.warning("run status not cached", extra={"run_id": run_id, "error": repr(exc)})
    sink.emit(
        "run.created",
        run_id,
        {"flow_id": body.flow_id, "status": PENDING},
        tenant_id=who.tenant_id,
        correlation_id=correlation_id,
    )
    try:
        await enqueue_run(
            gw.queue,
            gw.settings.flow_feature,
            RunJob(run_id=run_id, tenant_id=who.tenant_id, correlation_id=correlation_id),
        )
    except Exception as exc:
        log.warning("enqueue failed; the stalled-run sweep will retry", extra={"run_id": run_id, "error": repr(exc)})
    return Started(run_id, correlation_id)


async def _admit(gw: Gateway, who: Principal, run_id: str) -> None:
    """The run counts as a request of its user: 429 over a rate or the user's running requests."""
    if gw.limits is None:
        return
    refusal = await admission.admit(
        gw.limits,
        gw.db,
        who.tenant_id,
        who.user_id,
        admission.RUN_INTEGRATION,
        run_id,
        lease_seconds=gw.settings.flow_timeout_seconds,
    )
    if refusal:
        raise refused(refusal)


async def _release(gw: Gateway, who: Principal, run_id: str) -> None:
    if gw.limits is not None:
        await gw.limits.release_request(who.tenant_id, who.user_id, run_id)


async def _record(
    gw: Gateway,
    who: Principal,
    body: RunBody,
    evaluated: Evaluation,
    run_id: str,
    source: str,
    correlation_id: str,
    trigger: dict[str, Any] | None,
) -> asyncpg.Record | None:
    """The audit row and its first history row; None when another run holds `body.request_id`."""
    async with gw.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""
            INSERT INTO flow_runs_audit (run_id, correlation_id, flow_id, tenant_id, user_id, request_id, input_data,
                flow_definition, status, flow_version, definition_source, policy_changes, trigger, session_id,
                feature)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'PENDING', $9, $10, $11, $12, $13, $14)
            ON CONFLICT (tenant_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
            RETURNING {DOC_COLUMNS}
            """,
            run_id,
            correlation_id,
            body.flow_id,
            who.tenant_id,
            who.user_id,
            body.request_id,
            body.input,
            evaluated.flow.model_dump(mode="json"),
            evaluated.flow.version,
            source,
            evaluated.changes,
            trigger or {"via": "api"},
            uuid.uuid4(),
            gw.settings.flow_feature,
        )
        if row is not None:
            await conn.execute(
                "INSERT INTO flow_run_status_history (run_id, tenant_id, status, detail)"
                " VALUES ($1, $2, 'PENDING', $3)",
                run_id,
                who.tenant_id,
                f"created by {who.user_id}",
            )
    return row


async def get(gw: Gateway, who: Principal, run_id: str) -> dict[str, Any]:
    """From the cache, which every status change rewrites; from Postgres (and cached) on a miss."""
    runs = RunStore.of(gw)
    cached = await runs.cache_get(run_id)
    if cached is not None and cached.get("tenant_id") == who.tenant_id:
        return cached
    row = await runs.load(run_id, who.tenant_id)
    if row is None:
        raise NotFound("run not found")
    await runs.cache_put(row)
    return status_doc(row)


async def search(
    gw: Gateway, who: Principal, *, flow_id: str | None, status: str | None, limit: int, cursor: int | None
) -> tuple[list[dict[str, Any]], str | None]:
    rows = await gw.db.fetch(
        f"SELECT id, {DOC_COLUMNS} FROM flow_runs_audit WHERE tenant_id = $1"
        " AND ($2::text IS NULL OR flow_id = $2) AND ($3::text IS NULL OR status = $3)"
        " AND ($4::int IS NULL OR id < $4) ORDER BY id DESC LIMIT $5",
        who.tenant_id,
        flow_id,
        status.upper() if status else None,
        cursor,
        limit + 1,
    )
    items = [status_doc(r) for r in rows[:limit]]
    return items, (str(rows[limit - 1]["id"]) if len(rows) > limit else None)


async def cancel(gw: Gateway, who: Principal, run_id: str) -> str:
    row = await RunStore.of(gw).load(run_id, who.tenant_id)
    if row is None:
        raise NotFound("run not found")
    if row["status"] not in ACTIVE:
        raise Conflict(f"run already {row['status']}")
    reason = f"cancelled by {who.user_id}"
    await gw.streams.set(
        run_cancel_key(run_id, gw.settings.stream_buckets), reason, ex=gw.settings.flow_timeout_seconds
    )
    cancelled = await RunStore.of(gw).cancel_pending(run_id, who.tenant_id, reason)
    if cancelled is None:
        return "CANCELLING"
    await RunStore.of(gw).announce_end(cancelled, "cancelled", {"reason": reason})
    return "CANCELLED"
