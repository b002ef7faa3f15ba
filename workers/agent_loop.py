"""The agent loop: the model with the agent's MCP tools, each asked-for call run and fed back, to an answer.

Every call is checkpointed in `tool_steps` (common.agents.tool_steps): `running` before it starts, finished
before the loop goes on. A retried attempt first replays the finished steps (their events again, marked
`replayed`, and the conversation rebuilt from them) and never calls a finished tool again; a call that
was in flight when its worker died runs again only if the agent lists it `idempotent`. A call to a tool
the agent lists under `approval` is `awaiting` instead: the step's other calls run, then the attempt
ends `Parked` (the request waits with no worker) until a person decides; the next attempt runs an
approved call and feeds a denial to the model.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from common.agents import tool_steps
from common.agents.registry import Agent
from common.streams.protocol import Event
from workers import model, runner
from workers.attempt import Attempt, Stop
from workers.mcp_client import Outcome, Tool
from workers.tool_names import provider_name, provider_names
from workers.tool_requests import ToolRequest


class AgentStopped(Exception):
    """The loop ended without an answer; the message is the request's error, as is."""


class Parked(Exception):
    """The attempt stops here: calls await a person's approval."""


@dataclass
class Call:
    """One call of a step: `tool` is `server.tool`; `problem` says why it cannot run, if it cannot."""

    id: str
    tool: str
    arguments: dict[str, Any]
    problem: str | None = None


@dataclass
class Toolbox:
    """The agent's tools for this attempt, under both their names."""

    agent: Agent
    tools: dict[str, Tool]
    down: dict[str, str]
    to_provider: dict[str, str]
    from_provider: dict[str, str]

    def definitions(self) -> list[dict[str, Any]]:
        return [
            {
                "type": "function",
                "function": {"name": self.to_provider[q], "description": t.description, "parameters": t.schema},
            }
            for q, t in self.tools.items()
        ]

    def provider(self, qualified: str) -> str:
        return self.to_provider.get(qualified) or provider_name(qualified)

    def needs_approval(self, call: Call) -> bool:
        return call.problem is None and self.agent.tools is not None and call.tool in self.agent.tools.approval

    def refusal(self, qualified: str) -> str | None:
        """Why a call to `qualified` cannot run, or None."""
        if qualified in self.tools:
            return None
        server = qualified.partition(".")[0]
        if server in self.down:
            return self.down[server]
        return f"unknown tool {qualified}"


async def toolbox(rt: runner.WorkerRuntime, agent: Agent) -> Toolbox:
    assert agent.tools is not None
    tools, down = await rt.tools.catalog(agent.tools)
    from_provider = provider_names(t.qualified for t in tools)
    return Toolbox(
        agent, {t.qualified: t for t in tools}, down, {q: p for p, q in from_provider.items()}, from_provider
    )


async def run(
    rt: runner.WorkerRuntime,
    run: Attempt,
    agent: Agent,
    model_name: str,
    messages: list[dict[str, Any]],
    metadata: dict[str, Any],
    on_text: Callable[[str], Awaitable[None]],
) -> None:
    """Turns of the model until it answers without asking for tools, at most `agent.max_steps` of them."""
    box = await toolbox(rt, agent)
    step = await _replay(rt, run, box, messages, on_text)
    seen = {c["id"] for m in messages for c in m.get("tool_calls") or []}
    while True:
        requests: list[ToolRequest] = []
        reply: list[str] = []
        async for text in model.stream_reply(
            rt.settings,
            model_name,
            messages,
            metadata,
            tools=box.definitions() or None,
            calls=requests,
            meter=run.meter,
        ):
            reply.append(text)
            await on_text(text)
        if not requests:
            return
        step += 1
        if step > agent.max_steps:
            raise AgentStopped(
                f"agent {agent.id} stopped after max_steps ({agent.max_steps}) tool steps without a final answer"
            )
        calls = [_call(box, r, step, i, seen) for i, r in enumerate(requests)]
        awaiting = [c for c in calls if box.needs_approval(c)]
        ready = [c for c in calls if c not in awaiting]
        await rt.flusher.drain(run)
        await _begin(rt, run, step, "".join(reply), calls, frozenset(c.id for c in awaiting))
        await runner.append(
            rt,
            run,
            [_call_event(run, c) for c in calls]
            + [
                run.event("tool.approval_required", {"call_id": c.id, "tool": c.tool, "arguments": c.arguments})
                for c in awaiting
            ],
        )
        outcomes = await asyncio.gather(*(_execute(rt, box, c) for c in ready))
        await _checkpoint(rt, run, ready, outcomes)
        await runner.append(rt, run, [_result_event(run, c, o) for c, o in zip(ready, outcomes, strict=True)])
        if awaiting:
            raise Parked
        _extend(messages, box, "".join(reply), calls, outcomes)


def _call(box: Toolbox, request: ToolRequest, step: int, index: int, seen: set[str]) -> Call:
    """The call as relaygate names it; its id is unique in the request (its checkpoint's key) even when a
    provider reuses ids across turns."""
    qualified = box.from_provider.get(request.name) or request.name.replace("__", ".", 1)
    call_id = request.id or f"step{step}-{index}"
    if call_id in seen:
        call_id = f"{call_id}-step{step}-{index}"
    seen.add(call_id)
    try:
        arguments = json.loads(request.arguments or "{}")
    except ValueError:
        return Call(call_id, qualified, {}, f"the arguments for {qualified} are not valid JSON")
    if not isinstance(arguments, dict):
        return Call(call_id, qualified, {}, f"the arguments for {qualified} must be a JSON object")
    return Call(call_id, qualified, arguments)


async def _execute(rt: runner.WorkerRuntime, box: Toolbox, call: Call) -> Outcome:
    problem = call.problem or box.refusal(call.tool)
    if problem is not None:
        return Outcome.failed(problem)
    return await rt.tools.call(box.tools[call.tool], call.arguments)


async def _begin(
    rt: runner.WorkerRuntime,
    run: Attempt,
    step: int,
    reply: str,
    calls: list[Call],
    awaiting: frozenset[str] = frozenset(),
) -> None:
    p = run.payload
    rows = [(c.id, c.tool, c.arguments) for c in calls]
    await runner.persist(
        "tool steps", lambda: tool_steps.begin(rt.db, p.request_id, p.attempt, step, reply, rows, awaiting), run
    )


async def _checkpoint(rt: runner.WorkerRuntime, run: Attempt, calls: list[Call], outcomes: list[Outcome]) -> None:
    p = run.payload
    for call, outcome in zip(calls, outcomes, strict=True):

        def once(call: Call = call, outcome: Outcome = outcome) -> Awaitable[bool]:
            return tool_steps.finish(rt.db, p.request_id, p.attempt, call.id, outcome.ok, outcome.output, outcome.error)

        if not await runner.persist("tool checkpoint", once, run):
            raise Stop("superseded by a newer attempt", fenced=True)


def _call_event(run: Attempt, call: Call, replayed: bool = False) -> Event:
    data: dict[str, Any] = {"call_id": call.id, "tool": call.tool, "arguments": call.arguments}
    if replayed:
        data["replayed"] = True
    return run.event("tool.call", data)


def _result_event(run: Attempt, call: Call, outcome: Outcome, replayed: bool = False) -> Event:
    data: dict[str, Any] = {"call_id": call.id, "tool": call.tool, "ok": outcome.ok, "output": outcome.output}
    if outcome.error is not None:
        data["error"] = outcome.error
    if replayed:
        data["replayed"] = True
    return run.event("tool.result", data)


def _extend(
    messages: list[dict[str, Any]], box: Toolbox, reply: str, calls: list[Call], outcomes: list[Outcome]
) -> None:
    """The turn as the model sees it next: its own tool calls, then one result message per call."""
    messages.append(
        {
            "role": "assistant",
            "content": reply or None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": box.provider(c.tool), "arguments": json.dumps(c.arguments)},
                }
                for c in calls
            ],
        }
    )
    messages += [
        {"role": "tool", "tool_call_id": c.id, "content": o.for_model()} for c, o in zip(calls, outcomes, strict=True)
    ]


async def _replay(
    rt: runner.WorkerRuntime,
    run: Attempt,
    box: Toolbox,
    messages: list[dict[str, Any]],
    on_text: Callable[[str], Awaitable[None]],
) -> int:
    """Rebuild the steps earlier attempts finished; returns the last step number (0 when there is none)."""
    if run.payload.attempt == 1:
        return 0
    rows = await runner.persist("tool steps", lambda: tool_steps.load(rt.db, run.payload.request_id), run)
    if any(r["status"] == "awaiting" for r in rows):
        raise Parked
    last = 0
    for step, group in itertools.groupby(rows, key=lambda r: int(r["step"])):
        last, done = step, list(group)
        reply = str(done[0]["reply"])
        if reply:
            await on_text(reply)
        await rt.flusher.drain(run)
        calls = [Call(r["call_id"], r["tool"], dict(r["arguments"])) for r in done]
        await runner.append(rt, run, [_call_event(run, c, replayed=True) for c in calls])
        outcomes = await asyncio.gather(*(_resume(rt, run, box, c, r) for c, r in zip(calls, done, strict=True)))
        await runner.append(
            rt,
            run,
            [
                _result_event(run, c, o, replayed=r["status"] in ("ok", "error"))
                for c, o, r in zip(calls, outcomes, done, strict=True)
            ],
        )
        _extend(messages, box, reply, calls, outcomes)
    return last


async def _resume(rt: runner.WorkerRuntime, run: Attempt, box: Toolbox, call: Call, row: asyncpg.Record) -> Outcome:
    """A checkpointed call's outcome: a finished one's as stored, an approved one runs now, a denied one
    fails with the person's reason; one left in flight runs again only if its tool is idempotent."""
    status = row["status"]
    if status in ("ok", "error"):
        return Outcome(status == "ok", row["output"] or "", row["error"])
    p = run.payload
    idempotent = status == "approved" or (box.agent.tools is not None and call.tool in box.agent.tools.idempotent)
    await runner.persist(
        "tool steps",
        lambda: tool_steps.begin(
            rt.db, p.request_id, p.attempt, int(row["step"]), str(row["reply"]), [(call.id, call.tool, call.arguments)]
        ),
        run,
    )
    if status == "denied":
        reason = f": {row['error']}" if row["error"] else ""
        outcome = Outcome.failed(f"a person denied this call to {call.tool}{reason}")
    elif idempotent:
        outcome = await _execute(rt, box, call)
    else:
        outcome = Outcome.failed(
            f"tool {call.tool} was running when its worker stopped; it is not marked "
            "idempotent, so it was not run again and its effect is unknown"
        )
    await _checkpoint(rt, run, [call], [outcome])
    return outcome
