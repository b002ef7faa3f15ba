"""GET /api/v1/openapi.json: the API schema, behind authentication like every route but /health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api.deps import PrincipalDep

router = APIRouter(tags=["schema"])


@router.get("/api/v1/openapi.json", include_in_schema=False)
async def openapi(request: Request, _: PrincipalDep) -> dict[str, Any]:
    schema: dict[str, Any] = request.app.openapi()
    return schema
