"""A Slack reply's tool steps: a context line per call, and Approve/Deny buttons on a call awaiting approval.

Steps are kept by call_id, so the steps a retried attempt re-emits (replayed) update their line, never add one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.slack import actions, mrkdwn

MAX_LINES = 20  # the latest steps shown; Slack allows 50 blocks a message
MAX_DECISIONS = 10  # calls with buttons at once; the others are decided in the web UI, the CLI or the API
TEXT_CHARS = 200


@dataclass
class Step:
    call_id: str
    tool: str
    arguments: Any
    state: str = "running"  # running | awaiting | ok | error
    detail: str = ""


def apply(steps: dict[str, Step], kind: str, data: dict[str, Any]) -> bool:
    """Apply a tool event; True when it asks a person to decide (the message should show it at once)."""
    call_id = str(data.get("call_id") or "")
    if not call_id:
        return False
    step = steps.setdefault(call_id, Step(call_id, str(data.get("tool") or "tool"), data.get("arguments")))
    if kind == "tool.call" and step.state not in ("ok", "error"):
        step.state = "running"
    elif kind == "tool.approval_required":
        step.state = "awaiting"
        return True
    elif kind == "tool.result":
        step.state = "ok" if data.get("ok") else "error"
        step.detail = str(data.get("output") if data.get("ok") else data.get("error") or "")
    return False


def _short(text: str) -> str:
    text = " ".join(text.split())
    return mrkdwn.escape(text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…")


def line(step: Step) -> str:
    """One step in mrkdwn: the tool, its arguments, and where it stands."""
    call = f"`{mrkdwn.escape(step.tool)}` {_short(json.dumps(step.arguments, separators=(',', ':')))}"
    if step.state == "ok":
        return f":wrench: {call} → {_short(step.detail)}"
    if step.state == "error":
        return f":warning: {call} failed: {_short(step.detail)}"
    if step.state == "awaiting":
        return f":raised_hand: {call} waits for your approval"
    return f":hourglass_flowing_sand: {call} running…"


def blocks(steps: dict[str, Step], request_id: str, *, open_: bool) -> list[dict[str, Any]]:
    """Context lines for the latest steps, then (while the reply is open) buttons for the calls awaiting approval."""
    shown = list(steps.values())[-MAX_LINES:]
    out: list[dict[str, Any]] = []
    if len(steps) > len(shown):
        out.append(_context(f"… {len(steps) - len(shown)} earlier tool steps"))
    out += [_context(line(s)) for s in shown]
    if open_:
        awaiting = [s for s in steps.values() if s.state == "awaiting"][:MAX_DECISIONS]
        out += [_decision(s, request_id) for s in awaiting]
    return out


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _decision(step: Step, request_id: str) -> dict[str, Any]:
    value = json.dumps({"request_id": request_id, "call_id": step.call_id}, separators=(",", ":"))
    label = step.tool if len(step.tool) <= 60 else step.tool[:59] + "…"
    return {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": actions.APPROVE,
                "style": "primary",
                "value": value,
                "text": {"type": "plain_text", "text": f"Approve {label}"},
            },
            {
                "type": "button",
                "action_id": actions.DENY,
                "style": "danger",
                "value": value,
                "text": {"type": "plain_text", "text": "Deny"},
            },
        ],
    }
