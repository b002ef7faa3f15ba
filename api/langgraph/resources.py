"""relaygate's agents, sessions and requests in the shapes of LangGraph's assistants, threads and runs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from api.langgraph.messages import conversation
from common.agents.registry import Agent

# Agents come from a file and carry no timestamps of their own.
_AGENTS_SINCE = datetime(1970, 1, 1, tzinfo=UTC)

_RUN_STATUS = {
    "queued": "pending",
    "running": "running",
    "waiting": "interrupted",
    "completed": "success",
    "failed": "error",
    "cancelled": "interrupted",
}
TIMED_OUT = "timed out"  # the error of a request its deadline ended (common.requests.lifecycle)


def run_status(status: str, error: str | None) -> str:
    if status == "failed" and error == TIMED_OUT:
        return "timeout"
    return _RUN_STATUS.get(status, status)


def assistant(agent: Agent) -> dict[str, Any]:
    return {
        "assistant_id": agent.id,
        "graph_id": agent.id,
        "name": agent.id,
        "description": agent.description or None,
        "config": {},
        "context": {},
        "metadata": {"feature": agent.feature},
        "version": 1,
        "created_at": _AGENTS_SINCE,
        "updated_at": _AGENTS_SINCE,
    }


def thread(session: dict[str, Any], status: str, turns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "thread_id": session["session_id"],
        "created_at": session["created_at"],
        "updated_at": session["updated_at"],
        "metadata": session["integration_metadata"],
        "status": status,
        "values": {"messages": conversation(turns)},
        "interrupts": {},
    }


def thread_status(turns: list[dict[str, Any]]) -> str:
    if any(t["status"] in ("queued", "running", "waiting") for t in turns):
        return "busy"
    return "error" if turns and turns[-1]["status"] == "failed" else "idle"


def state(session: dict[str, Any], turns: list[dict[str, Any]]) -> dict[str, Any]:
    """The thread's only checkpoint: its conversation now (relaygate keeps no earlier checkpoints)."""
    running = [t for t in turns if t["status"] == "running"]
    latest = turns[-1]["request_id"] if turns else None
    return {
        "values": {"messages": conversation(turns)},
        "next": [running[0]["agent_id"]] if running else [],
        "checkpoint": {
            "thread_id": session["session_id"],
            "checkpoint_ns": "",
            "checkpoint_id": latest,
            "checkpoint_map": None,
        },
        "metadata": {},
        "created_at": turns[-1]["created_at"] if turns else session["created_at"],
        "parent_checkpoint": None,
        "tasks": [],
        "interrupts": [],
    }


def run(row: dict[str, Any]) -> dict[str, Any]:
    options = row.get("langgraph") or {}
    return {
        "run_id": row["request_id"],
        "thread_id": row["session_id"],
        "assistant_id": row["agent_id"],
        "created_at": row["created_at"],
        "updated_at": row["completed_at"] or row["created_at"],
        "status": run_status(row["status"], row["error"]),
        "metadata": options.get("metadata") or {},
        "multitask_strategy": options.get("multitask_strategy") or "enqueue",
        "kwargs": {},
    }
