"""The gateway's side of requests: the one intake (common.requests.intake) with its refusals answered as HTTP
errors, and looking up, deciding on and cancelling requests."""

from __future__ import annotations

from typing import Any

from api.deps import Gateway
from api.errors import ApiError, Conflict, Forbidden, Invalid, LimitExceeded, NotFound, refused
from common.agents import tool_steps
from common.platform.credentials import Principal
from common.requests import intake, lifecycle
from common.requests import repository as request_repo
from common.requests.cancelling import cancel_many, enqueue_safely
from common.requests.intake import Admitted
from common.requests.models import ACTIVE_STATUSES, RequestBody

_ANSWERS: dict[type[intake.Refused], type[ApiError]] = {
    intake.NotPermitted: Forbidden,
    intake.UnknownAgent: Invalid,
    intake.TooLarge: LimitExceeded,
    intake.NoSuchSession: NotFound,
    intake.Conflicting: Conflict,
}


def http_error(exc: intake.Refused) -> ApiError:
    """The HTTP answer to an intake refusal (a limit's is a 429 with Retry-After)."""
    if isinstance(exc, intake.Limited):
        return refused(exc.refusal)
    return _ANSWERS[type(exc)](exc.detail)


async def accept(
    gw: Gateway,
    who: Principal,
    body: RequestBody,
    *,
    idempotency_key: str | None,
    correlation_id: str,
    unseen_session: bool = False,
    request_id: str | None = None,
) -> Admitted:
    """`common.requests.intake.accept`, refusals raised as the gateway's named errors."""
    try:
        return await intake.accept(
            gw,
            who,
            body,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
            unseen_session=unseen_session,
            request_id=request_id,
        )
    except intake.Refused as exc:
        raise http_error(exc) from None


async def get(gw: Gateway, who: Principal, request_id: str) -> dict[str, Any]:
    row = await request_repo.get(gw.db, who, request_id)
    if row is None:
        raise NotFound("request not found")
    return row


async def decide(gw: Gateway, who: Principal, request_id: str, call_id: str, approve: bool, reason: str) -> str:
    """Record a person's decision on a call awaiting approval; returns the request's status after it.

    A call awaits from its `tool.approval_required` event on, while its attempt may still be running the
    step's other calls: a decision then is kept, and the attempt, parking, finds nothing left to wait for
    and queues the request again itself (`lifecycle.park`, under the same session lock)."""
    row = await get(gw, who, request_id)
    async with gw.db.acquire() as conn, conn.transaction():
        await lifecycle.lock_session(conn, row["session_id"])
        status = await request_repo.status(conn, row["request_id"])
        if status not in ("waiting", "running"):
            raise Conflict(f"request is {status}, not waiting for an approval")
        if not await tool_steps.decide(conn, row["request_id"], call_id, approve, reason):
            now = await tool_steps.status(conn, row["request_id"], call_id)
            if now is None:
                raise NotFound("this request has no tool call with this call_id")
            raise Conflict(f"tool call {call_id} is {now}, not awaiting a decision")
        if status == "running":
            return status
        upcoming = await lifecycle.unpark(conn, row["request_id"], gw.settings.request_timeout_seconds)
    await enqueue_safely(gw, upcoming)
    return "queued" if upcoming else "waiting"


async def cancel(gw: Gateway, who: Principal, request_id: str, reason: str = "cancelled by user") -> str:
    """Flag the request for its worker and cancel it outright if it has not started."""
    row = await get(gw, who, request_id)
    if row["status"] not in ACTIVE_STATUSES:
        raise Conflict(f"request already {row['status']}")
    await cancel_many(gw, row["session_id"], [request_id], reason)
    return "cancelling"
