"""The tenant's flow registry: every update is a new version; delete hides every version."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from api.deps import Gateway
from api.errors import BadRequest, Conflict, NotFound, PolicyRefused
from api.flows.schemas import FlowBody
from common.flows import functions
from common.flows.model import FlowCaps, FlowDefinition, FlowInvalid, validate_flow
from common.platform.credentials import Principal

_COLUMNS = "flow_id, version, name, description, tags, definition, created_by, created_at"


def check_definition(
    raw: dict[str, Any], tenant_id: str | None, caps: FlowCaps, flow_id: str | None = None
) -> FlowDefinition:
    """400 listing every problem; 403 when the definition names another tenant than `tenant_id` (if given)."""
    problems: list[str] = []
    try:
        flow = validate_flow(raw, functions.task_types(), caps)
    except FlowInvalid as exc:
        problems = exc.problems
        flow = None
    if flow_id is not None and raw.get("id") not in (None, flow_id):
        problems.append(f"definition id {raw.get('id')!r} does not match flow_id {flow_id!r}")
    if problems or flow is None:
        raise BadRequest(problems)
    if tenant_id is not None and flow.tenant_id != tenant_id:
        raise PolicyRefused(f"TenantIsolationPolicy: flow belongs to tenant {flow.tenant_id!r}, not {tenant_id!r}")
    return flow


async def checked(
    gw: Gateway, raw: dict[str, Any], tenant_id: str | None, flow_id: str | None = None
) -> FlowDefinition:
    """`check_definition` on a worker thread: a large definition never holds up the event loop."""
    return await asyncio.to_thread(check_definition, raw, tenant_id, FlowCaps.of(gw.settings), flow_id)


async def _insert(
    conn: asyncpg.Connection, who: Principal, body: FlowBody, flow: FlowDefinition, version: int
) -> dict[str, Any]:
    definition = {**flow.model_dump(mode="json"), "version": str(version)}
    row = await conn.fetchrow(
        f"INSERT INTO flows (tenant_id, flow_id, version, name, description, tags, definition, created_by)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_COLUMNS}",
        who.tenant_id,
        flow.id,
        version,
        body.name or flow.id,
        body.description,
        body.tags,
        definition,
        who.user_id,
    )
    return dict(row)


async def create(gw: Gateway, who: Principal, body: FlowBody) -> dict[str, Any]:
    functions.load_modules(gw.settings.flow_function_modules)
    flow = await checked(gw, body.definition, who.tenant_id)
    async with gw.db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2))", who.tenant_id, flow.id)
        live, latest = await conn.fetchrow(
            "SELECT bool_or(deleted_at IS NULL), max(version) FROM flows WHERE tenant_id = $1 AND flow_id = $2",
            who.tenant_id,
            flow.id,
        )
        if live:
            raise Conflict(f"flow {flow.id!r} exists; PUT /v1/flows/{flow.id} adds a version")
        # A deleted flow's id can be registered again; its versions keep counting up.
        return await _insert(conn, who, body, flow, (latest or 0) + 1)


async def update(gw: Gateway, who: Principal, flow_id: str, body: FlowBody) -> dict[str, Any]:
    functions.load_modules(gw.settings.flow_function_modules)
    flow = await checked(gw, {"id": flow_id, **body.definition}, who.tenant_id, flow_id)
    async with gw.db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2))", who.tenant_id, flow_id)
        latest = await conn.fetchval(
            "SELECT max(version) FROM flows WHERE tenant_id = $1 AND flow_id = $2 AND deleted_at IS NULL",
            who.tenant_id,
            flow_id,
        )
        if latest is None:
            raise NotFound("flow not found")
        return await _insert(conn, who, body, flow, latest + 1)


async def get(gw: Gateway, who: Principal, flow_id: str, version: int | None = None) -> dict[str, Any]:
    row = await gw.db.fetchrow(
        f"SELECT {_COLUMNS} FROM flows WHERE tenant_id = $1 AND flow_id = $2 AND deleted_at IS NULL"
        " AND ($3::int IS NULL OR version = $3) ORDER BY version DESC LIMIT 1",
        who.tenant_id,
        flow_id,
        version,
    )
    if row is None:
        raise NotFound("flow not found" if version is None else f"flow {flow_id!r} has no version {version}")
    return dict(row)


async def search(
    gw: Gateway, who: Principal, *, name: str | None, tag: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The latest version of each flow, by flow id; `name` matches part of the name or id."""
    rows = await gw.db.fetch(
        f"""
        SELECT {_COLUMNS} FROM (
            SELECT DISTINCT ON (flow_id) * FROM flows
             WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY flow_id, version DESC) latest
         WHERE ($2::text IS NULL OR name ILIKE '%' || $2 || '%' OR flow_id ILIKE '%' || $2 || '%')
           AND ($3::text IS NULL OR $3 = ANY(tags)) AND ($4::text IS NULL OR flow_id > $4)
         ORDER BY flow_id LIMIT $5
        """,
        who.tenant_id,
        name,
        tag,
        cursor,
        limit + 1,
    )
    items = [dict(r) for r in rows[:limit]]
    return items, (items[-1]["flow_id"] if len(rows) > limit else None)


async def delete(gw: Gateway, who: Principal, flow_id: str) -> None:
    result: str = await gw.db.execute(
        "UPDATE flows SET deleted_at = now() WHERE tenant_id = $1 AND flow_id = $2 AND deleted_at IS NULL",
        who.tenant_id,
        flow_id,
    )
    if result.endswith(" 0"):
        raise NotFound("flow not found")
