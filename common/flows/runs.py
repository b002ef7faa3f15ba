"""The flow run state machine in Postgres, shared by the gateway and the executor.

PENDING -> RUNNING -> COMPLETED | FAILED | CANCELLED. Every change bumps the row's
`version`, adds a status-history row and rewrites the Redis status cache (only ever
forward in version), so a cached answer is never older than the last change made.
Changes by the executor are conditional on its attempt: a lost worker's late write
changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from common.platform import lua, sink
from common.platform.keys import run_cache_key, run_stream_key
from common.platform.presence import UNLOCKED
from common.requests.stores import Stores
from common.streams.protocol import Event, StreamsRedis
from common.streams.writer import StreamWriter

log = logging.getLogger(__name__)

CACHE_RETRY_SECONDS = 5.0
PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)
ACTIVE = (PENDING, RUNNING)

DOC_COLUMNS = (
    "run_id, status, created_at, updated_at, tenant_id, flow_id, input_data, output_data, error_message,"
    " version, correlation_id, user_id, flow_version, attempt"
)

_CACHE_PUT = lua.load(__file__, "cache_put.lua")


def status_doc(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """`GET /v1/runs/{id}` as the original contract names the fields."""
    return {
        "run_id": row["run_id"],
        "status": row["status"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "tenant_id": row["tenant_id"],
        "flow_id": row["flow_id"],
        "flow_version": row["flow_version"],
        "user_id": row["user_id"],
        "correlation_id": row["correlation_id"],
        "attempt": row["attempt"],
        "input": row["input_data"],
        "output": row["output_data"],
        "error": row["error_message"],
        "version": row["version"],
    }


@dataclass
class RunStore:
    """Run rows plus their cache and stream, as both processes see them."""

    db: asyncpg.Pool
    redis: StreamsRedis
    writer: StreamWriter
    buckets: int
    cache_ttl: int

    @classmethod
    def of(cls, owner: Stores) -> RunStore:
        """The store of a gateway or a worker runtime."""
        return cls(owner.db, owner.streams, owner.writer, owner.settings.stream_buckets, owner.settings.redis_cache_ttl)

    def stream_key(self, run_id: str) -> str:
        return run_stream_key(run_id, self.buckets)

    async def cache_put(self, row: asyncpg.Record | dict[str, Any]) -> None:
        doc = status_doc(row)
        script = self.redis.register_script(_CACHE_PUT)  # type: ignore[misc]
        await script(
            keys=[run_cache_key(doc["run_id"], self.buckets)],
            args=[doc["version"], orjson.dumps(doc, default=str).decode(), self.cache_ttl],
        )

    async def cache_get(self, run_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(run_cache_key(run_id, self.buckets))
        if raw is None:
            return None
        _, _, body = raw.partition(b"\n")
        doc: dict[str, Any] = orjson.loads(body)
        return doc

    async def load(self, run_id: str, tenant_id: str) -> asyncpg.Record | None:
        return await self.db.fetchrow(
            f"SELECT {DOC_COLUMNS} FROM flow_runs_audit WHERE run_id = $1 AND tenant_id = $2", run_id, tenant_id
        )

    async def events(self, run_id: str, events: list[Event], *, dedupe: bool = False) -> bool:
        """Append one attempt's events to the run's stream; False when its fence refused them (a newer
        attempt wrote, or the run's `done` is written). `dedupe`: a retry after a lost reply."""
        return await self.writer.append_run(run_id, events, dedupe=dedupe)

    async def announce_end(self, row: asyncpg.Record, status: str, data: dict[str, Any], *, seq: int = 0) -> None:
        """Write a finished run's closing events, `run.<status>` (`status` in lower case) with `data` then `done`,
        export the first to the event sink, and clear the row's `done_pending`. `seq` numbers them from that
        value on (0: unnumbered). Safe to repeat: the stream's fence writes (and exports) one ending."""
        run_id, attempt = row["run_id"], row["attempt"]
        closing = [(f"run.{status}", data), ("done", {"run_id": run_id, "status": status})]
        written = await self.events(
            run_id,
            [
                Event(type=kind, request_id=run_id, attempt=attempt, seq=seq + n if seq else 0, data=body)  # type: ignore[arg-type]
                for n, (kind, body) in enumerate(closing)
            ],
        )
        if written:
            sink.emit(
                f"run.{status}",
                run_id,
                {"flow_id": row["flow_id"], **data},
                tenant_id=row["tenant_id"],
                correlation_id=row["correlation_id"],
            )
        await self.db.execute(
            "UPDATE flow_runs_audit SET done_pending = false WHERE run_id = $1 AND done_pending", run_id
        )

    async def unended(self, grace_seconds: float) -> list[asyncpg.Record]:
        """Terminal runs whose closing events were not written `grace_seconds` after they ended (their
        worker died, or Redis was away, in between)."""
        return list(
            await self.db.fetch(
                f"SELECT {DOC_COLUMNS} FROM flow_runs_audit WHERE done_pending"
                " AND completed_at < now() - make_interval(secs => $1) ORDER BY completed_at LIMIT 100",
                grace_seconds,
            )
        )

    async def transition(
        self,
        run_id: str,
        tenant_id: str,
        to: str,
        *,
        where: str,
        args: tuple[Any, ...] = (),
        sets: str = "",
        detail: str | None = None,
    ) -> asyncpg.Record | None:
        """One conditional status change with its history row; the cache follows. None: not applied."""
        async with self.db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE flow_runs_audit SET status = $3, version = version + 1, updated_at = now(){sets}"
                f" WHERE run_id = $1 AND tenant_id = $2 AND ({where}) RETURNING {DOC_COLUMNS}",
                run_id,
                tenant_id,
                to,
                *args,
            )
            if row is None:
                return None
            await conn.execute(
                "INSERT INTO flow_run_status_history (run_id, tenant_id, status, detail) VALUES ($1, $2, $3, $4)",
                run_id,
                tenant_id,
                to,
                detail,
            )
        await self.cache_after_change(row)
        return row

    async def cache_after_change(self, row: asyncpg.Record) -> None:
        """The change is committed: the cache must follow, so a Redis blip is retried for a while."""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(CACHE_RETRY_SECONDS),
                wait=wait_fixed(0.2),
                retry=retry_if_exception_type(RedisError),
                reraise=True,
            ):
                with attempt:
                    await self.cache_put(row)
        except RedisError as exc:
            log.error(
                "run status cache not updated; it may lag until it expires",
                extra={"run_id": row["run_id"], "error": repr(exc)},
            )

    async def claim(
        self, run_id: str, tenant_id: str, attempt: int, lease_seconds: float, holder: int | None = None
    ) -> asyncpg.Record | None:
        """Start `attempt` of a PENDING run, held by the process with presence key `holder`."""
        return await self.transition(
            run_id,
            tenant_id,
            RUNNING,
            where="status = 'PENDING' AND attempt = $4",
            args=(attempt, lease_seconds, holder),
            sets=", lease_expires_at = now() + make_interval(secs => $5), lease_holder = $6,"
            " started_at = coalesce(started_at, now())",
            detail=f"attempt {attempt}",
        )

    async def finish(
        self, run_id: str, tenant_id: str, attempt: int, status: str, *, output: Any = None, error: str | None = None
    ) -> asyncpg.Record | None:
        return await self.transition(
            run_id,
            tenant_id,
            status,
            where="status = 'RUNNING' AND attempt = $4",
            args=(attempt, output, error),
            sets=", output_data = $5::jsonb, error_message = $6, completed_at = now(), lease_expires_at = NULL,"
            " done_pending = true",
            detail=error,
        )

    async def cancel_pending(self, run_id: str, tenant_id: str, reason: str) -> asyncpg.Record | None:
        return await self.transition(
            run_id,
            tenant_id,
            CANCELLED,
            where="status = 'PENDING'",
            args=(reason,),
            sets=", error_message = $4, completed_at = now(), done_pending = true",
            detail=reason,
        )

    async def heartbeat(self, run_id: str, attempt: int, lease_seconds: float) -> bool:
        held = await self.db.fetchval(
            "UPDATE flow_runs_audit SET lease_expires_at = now() + make_interval(secs => $3)"
            " WHERE run_id = $1 AND attempt = $2 AND status = 'RUNNING' RETURNING 1",
            run_id,
            attempt,
            lease_seconds,
        )
        return held is not None

    async def task_states(self, run_id: str, tenant_id: str) -> dict[str, asyncpg.Record]:
        rows = await self.db.fetch(
            "SELECT * FROM flow_run_tasks WHERE run_id = $1 AND tenant_id = $2", run_id, tenant_id
        )
        return {r["task_id"]: r for r in rows}

    async def task_started(self, run_id: str, tenant_id: str, task_id: str, tries: int) -> None:
        await self.db.execute(
            """
            INSERT INTO flow_run_tasks (run_id, task_id, tenant_id, status, tries) VALUES ($1, $2, $3, 'running', $4)
            ON CONFLICT (run_id, task_id) DO UPDATE
               SET status = 'running', tries = excluded.tries, error = NULL, started_at = now()
             WHERE flow_run_tasks.status <> 'completed'
            """,
            run_id,
            task_id,
            tenant_id,
            tries,
        )

    async def task_finished(
        self, run_id: str, tenant_id: str, attempt: int, task_id: str, status: str, output: Any, error: str | None
    ) -> bool:
        """Record a task's end, only while this attempt still owns the run."""
        done = await self.db.fetchval(
            """
            UPDATE flow_run_tasks t SET status = $5, output = $6::jsonb, error = $7, completed_at = now()
              FROM flow_runs_audit r
             WHERE t.run_id = $1 AND t.tenant_id = $2 AND t.task_id = $4 AND r.run_id = t.run_id
               AND r.attempt = $3 AND r.status = 'RUNNING'
            RETURNING 1
            """,
            run_id,
            tenant_id,
            attempt,
            task_id,
            status,
            output,
            error,
        )
        return done is not None

    async def suspects(self, unrenewed_seconds: float, lease_seconds: float) -> tuple[list[int], list[int]]:
        """Holders of running runs that may be lost (as common.requests.lifecycle.suspects): (those with a
        lapsed lease, those with a run unrenewed for `unrenewed_seconds` within its lease and no presence
        lock). A beat sets the lease `lease_seconds` ahead."""
        rows = await self.db.fetch(
            f"""
            SELECT lease_holder, bool_or(lease_expires_at < now()) AS lapsed,
                   bool_or(lease_expires_at >= now() AND {UNLOCKED}) AS unlocked
              FROM flow_runs_audit
             WHERE status = 'RUNNING' AND lease_holder IS NOT NULL
               AND lease_expires_at < now() + make_interval(secs => $2::float8 - $1::float8)
             GROUP BY lease_holder
            """,
            unrenewed_seconds,
            lease_seconds,
        )
        return [r["lease_holder"] for r in rows if r["lapsed"]], [r["lease_holder"] for r in rows if r["unlocked"]]

    async def reap_expired(
        self,
        max_attempts: int,
        gone: list[int] | None = None,
        unrenewed_seconds: float = 0,
        lease_seconds: float = 0,
        spare: list[int] | None = None,
    ) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """Runs whose executor was lost, back to PENDING with the next attempt, or FAILED: their lease lapsed
        (unless its holder is one of the `spare` processes), or they went `unrenewed_seconds` unrenewed and
        their holder is one of the `gone` processes. Each row comes with `holder_gone` (found by its holder,
        before its lease lapsed)."""
        lost = f"""
            SELECT id, lease_expires_at >= now() AS holder_gone FROM flow_runs_audit
             WHERE status = 'RUNNING' AND (
                   (lease_expires_at < now() AND NOT coalesce(lease_holder = ANY($5::int[]), false))
                OR (lease_holder = ANY($2::int[])
                   AND lease_expires_at < now() + make_interval(secs => $4::float8 - $3::float8) AND {UNLOCKED}))
        """
        args = (max_attempts, gone or [], unrenewed_seconds, lease_seconds, spare or [])
        async with self.db.acquire() as conn, conn.transaction():
            requeued = await conn.fetch(
                f"""
                WITH lost AS ({lost} AND attempt < $1 LIMIT 100 FOR UPDATE SKIP LOCKED)
                UPDATE flow_runs_audit r SET status = 'PENDING', attempt = attempt + 1, lease_expires_at = NULL,
                       version = version + 1, updated_at = now()
                  FROM lost WHERE r.id = lost.id
                RETURNING {DOC_COLUMNS}, feature, lease_holder, holder_gone
                """,
                *args,
            )
            failed = await conn.fetch(
                f"""
                WITH lost AS ({lost} AND attempt >= $1 LIMIT 100 FOR UPDATE SKIP LOCKED)
                UPDATE flow_runs_audit r SET status = 'FAILED', error_message = 'worker lost too many times',
                       lease_expires_at = NULL, version = version + 1, updated_at = now(), completed_at = now(),
                       done_pending = true
                  FROM lost WHERE r.id = lost.id
                RETURNING {DOC_COLUMNS}, lease_holder, holder_gone
                """,
                *args,
            )
            for row, detail in [
                *((r, "worker lost; requeued") for r in requeued),
                *((r, "worker lost too many times") for r in failed),
            ]:
                await conn.execute(
                    "INSERT INTO flow_run_status_history (run_id, tenant_id, status, detail) VALUES ($1, $2, $3, $4)",
                    row["run_id"],
                    row["tenant_id"],
                    row["status"],
                    detail,
                )
        for row in [*requeued, *failed]:
            await self.cache_after_change(row)
        return list(requeued), list(failed)

    async def stalled(self, older_than_seconds: float, *, retried: bool = False) -> list[asyncpg.Record]:
        """PENDING runs nobody picked up (the queue was down when they were created); with `retried`, only
        those a reaper requeued (its job is lost if the reaper died before queueing it)."""
        return list(
            await self.db.fetch(
                "SELECT run_id, tenant_id, attempt, correlation_id, feature FROM flow_runs_audit"
                " WHERE status = 'PENDING' AND updated_at < now() - make_interval(secs => $1)"
                " AND attempt > $2 ORDER BY id LIMIT 200",
                older_than_seconds,
                1 if retried else 0,
            )
        )
