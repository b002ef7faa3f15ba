"""The chaos suite's flow-run clients, and their runs' verification.

Each client starts one flow run after another (`POST /v1/runs`, repeated with the same `request_id`
through another gateway when it fails) and follows the run's stream over SSE to its `done`, resuming
with `Last-Event-ID` whenever the stream ends early. A run waits a moment (`sleep`), asks the offline
model (`llm`, streamed as tokens), sends that text to an agent (`agent`: a request in the run's session,
verified as any request is) and echoes the reply (`echo`), so a fault can land in any kind of task.

The verification, against `flow_runs_audit` and `XRANGE` of every run stream: nothing left pending or
running; exactly one terminal event and one `done` per run, `done` last; no event of an attempt after a
newer one began; a completed run's outputs right (the model's text as the offline model writes it, and
as its tokens of the final attempt spell it; the agent's reply as its request stored it; the echo of
that reply) and equal to the stored output; and what each client received equal to its runs' streams.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import asyncpg
import httpx
import orjson
from chaos_clients import Connection, GatewayClient, Received, Traffic
from chaos_report import spread
from chaos_verify import Entry, Verifier, fetch

from workers.offline_model import compose_reply

ACTIVE_RUNS = ("PENDING", "RUNNING")
TERMINALS = {"run.completed", "run.failed", "run.cancelled"}


@dataclass
class FlowRun:
    """One run a client started, from its first POST to its `done`."""

    prompt: str
    key: str
    posted_at: float
    run_id: str = ""
    post_tries: int = 0
    received: list[Received] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    done_at: float | None = None
    cancel_sent: bool = False


def definition(tenant: str, prompt: str, wait: float) -> dict[str, Any]:
    tasks = [
        {"id": "wait", "type": "sleep", "input": {"seconds": wait}},
        {"id": "draft", "type": "llm", "depends_on": ["wait"], "input": {"prompt": prompt}},
        {"id": "ask", "type": "agent", "depends_on": ["draft"], "input": {"content": "{{ tasks.draft.output.text }}"}},
        {"id": "end", "type": "echo", "depends_on": ["ask"], "input": {"reply": "{{ tasks.ask.output.content }}"}},
    ]
    return {"id": "chaos", "version": "1", "type": "DAG", "tenant_id": tenant, "tasks": tasks}


class RunClient(GatewayClient):
    def __init__(
        self,
        index: int,
        http: httpx.AsyncClient,
        ports: Callable[[], list[int]],
        token: str,
        tenant: str,
        traffic: Traffic,
        seed: int,
        cancel_share: float = 0.0,
    ) -> None:
        super().__init__(index, http, ports, token, traffic, seed)
        self.tenant = tenant
        self.cancel_share = cancel_share
        self.runs: list[FlowRun] = []

    def open_runs(self) -> int:
        return sum(1 for r in self.runs if r.run_id and r.done_at is None)

    async def converse(self, stop: asyncio.Event) -> None:
        """Start runs one after another until `stop`; each waits for the previous one's `done`."""
        while not stop.is_set():
            prompt = f"chaos run {len(self.runs) + 1} of client {self.index} {uuid.uuid4().hex[:8]}"
            run = FlowRun(prompt, uuid.uuid4().hex, time.time())
            self.runs.append(run)
            run.run_id = await self._post(run)
            if self.rng.random() < self.cancel_share:
                run.cancel_sent = True
                self.cancel_later(f"/v1/runs/{run.run_id}/cancel", self.rng.uniform(0.1, 4.0))
            url = f"/v1/runs/{run.run_id}/stream"
            while run.done_at is None:
                last = run.received[-1].id if run.received else None
                on_entry = functools.partial(self._receive, run)
                await self.read("run stream", url, last, run.connections, on_entry, {"run": run.run_id})
            await asyncio.sleep(self.rng.uniform(0, 1))

    async def _post(self, run: FlowRun) -> str:
        body = {
            "flow_id": "chaos",
            "tenant_id": self.tenant,
            "request_id": run.key,
            "input": {},
            "flow_definition": definition(self.tenant, run.prompt, round(self.rng.uniform(0.2, 1.5), 2)),
        }

        def counted() -> None:
            run.post_tries += 1

        r = await self.send("run post", "/v1/runs", (202,), body, on_try=counted)
        return str(r.json()["run_id"])

    @staticmethod
    def _receive(run: FlowRun, entry: Received) -> None:
        run.received.append(entry)
        if entry.type == "done":
            run.done_at = time.time()


async def active_runs(database_url: str, tenant: str) -> int:
    rows = await fetch(
        database_url,
        "SELECT count(*) FROM flow_runs_audit WHERE tenant_id = $1 AND status = ANY($2::text[])",
        tenant,
        list(ACTIVE_RUNS),
    )
    return int(rows[0][0])


async def load_runs(database_url: str, tenant: str) -> dict[str, asyncpg.Record]:
    rows = await fetch(
        database_url,
        "SELECT run_id, session_id::text AS session_id, status, attempt, output_data, error_message,"
        " extract(epoch FROM now() - created_at) AS age FROM flow_runs_audit WHERE tenant_id = $1",
        tenant,
    )
    return {r["run_id"]: r for r in rows}


def verify_runs(
    verifier: Verifier,
    clients: list[RunClient],
    streams: dict[str, list[Entry]],
    rows: dict[str, asyncpg.Record],
    replies: dict[str, str],
    model_tokens: int,
) -> None:
    """`streams`: each run's entries; `replies`: every stored request's reply (the agent tasks' requests)."""
    statuses: Counter[str] = Counter()
    retried = received = 0
    gaps: list[float] = []
    for client in clients:
        for run in client.runs:
            if not run.run_id:
                verifier.anomalies.add("run_never_accepted", prompt=run.prompt, tries=run.post_tries)
                continue
            row, entries = rows.get(run.run_id), streams.get(run.run_id, [])
            if row is None:
                verifier.anomalies.add("run_accepted_then_lost", run_id=run.run_id)
                continue
            statuses[row["status"]] += 1
            retried += any(e.type == "run.retrying" for e in entries)
            gaps += takeover_gaps(entries)
            _one_run(verifier, run, row, entries, replies, model_tokens)
            got = [r for r in run.received if r.type != "stream.reset"]
            received += len(got)
            if len(got) != len(run.received):
                verifier.anomalies.add("stream_reset", run=run.run_id, n=len(run.received) - len(got))
            verifier.compare({"client": f"run-{client.index}", "run": run.run_id}, got, entries, None)
    verifier.figures["runs"] = {
        "total": sum(len(c.runs) for c in clients),
        "by_status": dict(statuses),
        "retried": retried,
        "entries_received": received,
        "takeover_gap": spread(gaps),
        "seconds": spread([r.done_at - r.posted_at for c in clients for r in c.runs if r.done_at]),
    }


def takeover_gaps(entries: list[Entry]) -> list[float]:
    """Seconds from an attempt's last entry to the next attempt's first: how long a lost run stood still."""
    return [(b.ms - a.ms) / 1000 for a, b in pairwise(entries) if b.attempt > a.attempt > 0]


def _one_run(
    verifier: Verifier,
    run: FlowRun,
    row: asyncpg.Record,
    entries: list[Entry],
    replies: dict[str, str],
    model_tokens: int,
) -> None:
    what = {"run_id": run.run_id, "status": row["status"], "attempt": row["attempt"]}
    if row["status"] in ACTIVE_RUNS:
        verifier.anomalies.add("run_stuck", **what, age_s=round(float(row["age"]), 1))
        return
    if not entries:
        verifier.anomalies.add("run_without_events", **what)
        return
    terminals = [i for i, e in enumerate(entries) if e.type in TERMINALS]
    dones = [i for i, e in enumerate(entries) if e.type == "done"]
    if len(terminals) != 1:
        verifier.anomalies.add("run_terminals", **what, terminals=[entries[i].type for i in terminals])
    if len(dones) != 1 or dones[0] != len(entries) - 1:
        verifier.anomalies.add("run_done", **what, dones=len(dones), last=entries[-1].type)
    highest, stale = 0, []
    for e in entries:
        if e.attempt < highest:
            stale.append(f"{e.type}@{e.attempt}<{highest}")
        highest = max(highest, e.attempt)
    if stale:
        verifier.anomalies.add("run_stale_attempt_event", **what, n=len(stale), events=stale[:4])
    if not terminals:
        return
    terminal = entries[terminals[-1]]
    if terminal.type.removeprefix("run.") != row["status"].lower():
        verifier.anomalies.add("run_status_mismatch", **what, stream=terminal.type)
    if row["status"] == "CANCELLED" and run.cancel_sent:
        return
    if row["status"] != "COMPLETED":
        verifier.anomalies.add(f"run_ended_{row['status'].lower()}", **what, error=row["error_message"])
        return
    announced = terminal.data().get("output") or {}
    outputs = announced.get("tasks", {})
    stored = orjson.loads(row["output_data"]) if isinstance(row["output_data"], str) else row["output_data"]
    if stored != announced:
        verifier.anomalies.add("run_output_not_stored", **what)
    text = "".join(compose_reply(run.prompt, model_tokens))
    ask = outputs.get("ask", {})
    problems = {
        "draft": outputs.get("draft", {}).get("text") != text,
        "draft_tokens": _tokens(entries, "draft") != text,
        "ask": ask.get("content") is None or ask.get("content") != replies.get(str(ask.get("request_id"))),
        "end": outputs.get("end", {}).get("reply") != ask.get("content"),
    }
    if any(problems.values()):
        verifier.anomalies.add("run_output_mismatch", **what, wrong=[k for k, bad in problems.items() if bad])


def _tokens(entries: list[Entry], task_id: str) -> str:
    """A task's text as its tokens spell it from its last start on (an attempt that took over skips a task
    that completed before)."""
    starts = [i for i, e in enumerate(entries) if e.type == "task.started" and e.data().get("task_id") == task_id]
    if not starts:
        return ""
    attempt = entries[starts[-1]].attempt
    return "".join(
        e.data()["text"]
        for e in entries[starts[-1] + 1 :]
        if e.type == "token" and e.attempt == attempt and e.data().get("task_id") == task_id
    )
