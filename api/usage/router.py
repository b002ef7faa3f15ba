"""GET /api/v1/usage: requests, tokens and cost by day, user, agent or model (CSV with Accept: text/csv)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from api.deps import GatewayDep, PrincipalDep, require_scope
from api.errors import Invalid, responses
from api.responses import JSONResponse
from api.usage import service
from common.platform.credentials import SCOPE_REQUESTS

router = APIRouter(
    prefix="/api/v1/usage",
    tags=["usage"],
    dependencies=[Depends(require_scope(SCOPE_REQUESTS))],
    responses=responses(Invalid),
)

MAX_DAYS = 400


@router.get("")
async def usage(
    request: Request,
    gw: GatewayDep,
    who: PrincipalDep,
    start: Annotated[date | None, Query(alias="from", description="first UTC day (default: 30 days ago)")] = None,
    end: Annotated[date | None, Query(alias="to", description="last UTC day, included (default: today)")] = None,
    group_by: service.GroupBy = "day",
) -> Response:
    end = end or datetime.now(UTC).date()
    start = start or (end - timedelta(days=29) if end.toordinal() > 29 else date.min)
    if start > end:
        raise Invalid("`from` is after `to`")
    if (end - start).days >= MAX_DAYS:
        raise Invalid(f"ask for at most {MAX_DAYS} days at a time")
    rows = await service.totals(gw.db, who, start, end, group_by)
    if "text/csv" in request.headers.get("accept", ""):
        return Response(service.as_csv(group_by, rows), media_type="text/csv")
    total = {f: sum(r[f] for r in rows) for f in service.FIELDS}
    return JSONResponse(
        {"from": start.isoformat(), "to": end.isoformat(), "group_by": group_by, "rows": rows, "total": total}
    )
