"""Usage totals from the daily rollup (`usage_daily`), never a scan of request rows."""

from __future__ import annotations

import csv
import io
from datetime import date
from typing import Any, Literal

import asyncpg

from common.platform.credentials import SCOPE_ADMIN, Principal

GroupBy = Literal["day", "user", "agent", "model"]
_KEY = {"day": "day", "user": "user_id", "agent": "agent_id", "model": "model"}
FIELDS = ("requests", "completed", "failed", "cancelled", "input_tokens", "output_tokens", "cost_usd")


async def totals(db: asyncpg.Pool, who: Principal, start: date, end: date, group_by: GroupBy) -> list[dict[str, Any]]:
    """One row per group between `start` and `end` (UTC days, both included), in the caller's tenant:
    its whole tenant for an `admin`, else the caller's own requests."""
    key = _KEY[group_by]
    rows = await db.fetch(
        f"""
        SELECT {key} AS key, sum(requests)::bigint AS requests, sum(completed)::bigint AS completed,
               sum(failed)::bigint AS failed, sum(cancelled)::bigint AS cancelled,
               sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens,
               sum(cost_usd)::float8 AS cost_usd
          FROM usage_daily
         WHERE tenant_id = $1 AND day BETWEEN $2 AND $3 AND ($4::text IS NULL OR user_id = $4)
         GROUP BY {key} ORDER BY {key}
        """,
        who.tenant_id,
        start,
        end,
        None if SCOPE_ADMIN in who.scopes else who.user_id,
    )
    return [
        {group_by: r["key"].isoformat() if isinstance(r["key"], date) else r["key"], **{f: r[f] for f in FIELDS}}
        for r in rows
    ]


def as_csv(group_by: GroupBy, rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[group_by, *FIELDS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
