"""The chaos suite's verification of every request, and its figures.

Against Postgres (`request_logs`) and `XRANGE` of every session stream: nothing left queued or
running; exactly one terminal event and one `done` per request, `done` after the terminal and
nothing after it; no event of an attempt after a newer attempt began; the final attempt's text
(tokens after the last `run.retrying`, and the `message` event) equal to `response_content`; and
for each client, what it received over SSE (across resumes) equal to its stream's entries, in
order, with no gap, no duplicate, byte for byte; and per user, the usage rollup (`usage_daily`)
counting every ended request once, with the tokens its rows hold (a flow's llm tasks have no rows and
are left out).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from chaos_clients import Received, SessionClient
from chaos_report import Anomalies, spread
from redis.asyncio import Redis

from common.platform.keys import stream_key
from common.streams.protocol import event_json, parse_id
from workers import flow_usage

TERMINALS = {"run.completed", "run.failed", "run.cancelled"}
ACTIVE = {"queued", "running"}
PAGE = 5000


@dataclass
class Entry:
    id: str
    type: str
    request_id: str
    attempt: int
    json: bytes

    @property
    def ms(self) -> int:
        return int(parse_id(self.id)[0])

    def data(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.json)["data"]
        return body


async def read_stream(redis: Redis, key: str) -> list[Entry]:
    entries: list[Entry] = []
    start = "-"
    while True:
        page = await redis.xrange(key, start, "+", count=PAGE)
        for raw_id, fields in page:
            entries.append(
                Entry(
                    raw_id.decode(),
                    fields[b"type"].decode(),
                    fields[b"request_id"].decode(),
                    int(fields[b"attempt"]),
                    event_json(fields),
                )
            )
        if len(page) < PAGE:
            return entries
        start = "(" + page[-1][0].decode()


async def fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """One query on a connection of its own (the harness holds no pool)."""
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def active_rows(database_url: str, tenant: str) -> int:
    rows = await fetch(
        database_url,
        "SELECT count(*) FROM request_logs WHERE tenant_id = $1 AND status IN ('queued', 'running')",
        tenant,
    )
    return int(rows[0][0])


async def load_rows(database_url: str, tenant: str) -> dict[str, asyncpg.Record]:
    rows = await fetch(
        database_url,
        "SELECT request_id::text AS request_id, session_id::text AS session_id, status, attempt,"
        " response_content, error, created_at, extract(epoch FROM now() - created_at) AS age"
        " FROM request_logs WHERE tenant_id = $1",
        tenant,
    )
    return {r["request_id"]: r for r in rows}


async def usage_mismatches(database_url: str, tenant: str) -> list[dict[str, Any]]:
    """Users whose rollup does not hold exactly their ended requests and their rows' tokens."""
    rows = await fetch(
        database_url,
        """
        SELECT user_id, coalesce(r.ended, 0) AS ended, coalesce(u.requests, 0)::bigint AS counted,
               coalesce(r.tokens, 0)::bigint AS tokens, coalesce(u.tokens, 0)::bigint AS rolled_up
          FROM (SELECT user_id, count(*) FILTER (WHERE status IN ('completed', 'failed', 'cancelled')) AS ended,
                       sum(input_tokens + output_tokens) AS tokens
                  FROM request_logs WHERE tenant_id = $1 GROUP BY user_id) r
          FULL JOIN (SELECT user_id, sum(requests) AS requests, sum(input_tokens + output_tokens) AS tokens
                       FROM usage_daily WHERE tenant_id = $1 AND agent_id <> $2 GROUP BY user_id) u USING (user_id)
        """,
        tenant,
        flow_usage.AGENT,  # a flow's llm tasks: no request row to match (a rerun task counts again)
    )
    return [dict(r) for r in rows if (r["ended"], r["tokens"]) != (r["counted"], r["rolled_up"])]


async def stream_tails(redis: Redis, clients: list[SessionClient], buckets: int) -> dict[str, str]:
    """The newest entry id of every client's session stream."""
    tails = {}
    for client in clients:
        last = await redis.xrevrange(stream_key(client.session_id, buckets), "+", "-", count=1)
        if last:
            tails[client.session_id] = last[0][0].decode()
    return tails


async def catch_up(redis: Redis, clients: list[SessionClient], buckets: int, timeout: float) -> dict[str, str]:
    """Wait (bounded) until every client has received its stream's newest entry; returns those entries' ids."""
    tails = await stream_tails(redis, clients, buckets)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(
            c.last_id is not None and parse_id(c.last_id) >= parse_id(tails[c.session_id])
            for c in clients
            if c.session_id in tails
        ):
            break
        await asyncio.sleep(0.2)
    return tails


class Verifier:
    def __init__(self, anomalies: Anomalies) -> None:
        self.anomalies = anomalies
        self.figures: dict[str, Any] = {}

    # ------------------------------------------------------------------ per request, from the stream and Postgres

    def requests(
        self, streams: dict[str, list[Entry]], rows: dict[str, asyncpg.Record], cancelled: set[str]
    ) -> dict[str, list[Entry]]:
        """`cancelled`: the requests a client cancelled, and the sessions of the runs one cancelled (their agent
        tasks' requests): those may end `cancelled`."""
        by_request: dict[str, list[Entry]] = defaultdict(list)
        for entries in streams.values():
            for e in entries:
                if e.request_id:
                    by_request[e.request_id].append(e)
        statuses: Counter[str] = Counter()
        unstored = retried = 0
        for request_id, events in by_request.items():
            row = rows.get(request_id)
            retried += any(e.type == "run.retrying" for e in events)
            unstored += row is None
            self._one_request(request_id, events, row)
        for request_id, row in rows.items():
            statuses[row["status"]] += 1
            if row["status"] in ACTIVE:
                self.anomalies.add(
                    "stuck",
                    request_id=request_id,
                    status=row["status"],
                    attempt=row["attempt"],
                    age_s=round(float(row["age"]), 1),
                    last_event=by_request[request_id][-1].type if by_request.get(request_id) else "-",
                )
            elif row["status"] == "cancelled" and cancelled & {request_id, row["session_id"]}:
                pass
            elif row["status"] != "completed":
                # A request that waited out its whole deadline (REQUEST_TIMEOUT_SECONDS) was stuck until then.
                kind = "timed_out" if row["error"] == "timed out" else f"ended_{row['status']}"
                self.anomalies.add(kind, request_id=request_id, attempt=row["attempt"], error=row["error"])
            if request_id not in by_request:
                self.anomalies.add("row_without_events", request_id=request_id, status=row["status"])
        self.figures["requests"] = {
            "total": len(by_request.keys() | rows.keys()),
            "stored": len(rows),
            "by_status": dict(statuses),
            "retried": retried,
            "announced_not_stored": unstored,
        }
        return by_request

    def _one_request(self, request_id: str, events: list[Entry], row: asyncpg.Record | None) -> None:
        what = {"request_id": request_id, "status": row["status"] if row is not None else "not stored"}
        still_open = row is not None and row["status"] in ACTIVE  # reported once, as `stuck`
        terminals = [i for i, e in enumerate(events) if e.type in TERMINALS]
        dones = [i for i, e in enumerate(events) if e.type == "done"]
        if not terminals and not still_open:
            self.anomalies.add("no_terminal", **what, last_event=events[-1].type)
        elif len(terminals) > 1:
            self.anomalies.add(
                "double_terminal", **what, terminals=[f"{events[i].type}@{events[i].attempt}" for i in terminals]
            )
        if not dones and not still_open:
            self.anomalies.add("missing_done", **what, last_event=events[-1].type, at=events[-1].id)
        elif len(dones) > 1:
            self.anomalies.add("double_done", **what, attempts=[events[i].attempt for i in dones])
        if terminals and dones and dones[0] < terminals[-1]:
            self.anomalies.add("done_before_terminal", **what)
        if dones:
            after = [e.type for e in events[dones[0] + 1 :] if not e.type.startswith("delivery.")]
            if after:
                self.anomalies.add("event_after_done", **what, events=after[:6])
        highest, stale = 0, []
        for e in events:
            if e.attempt < highest:
                stale.append(f"{e.type}@{e.attempt}<{highest}")
            highest = max(highest, e.attempt)
        if stale:
            self.anomalies.add("stale_attempt_event", **what, n=len(stale), events=stale[:4])
        if row is None:
            if terminals and events[terminals[-1]].type != "run.failed":
                self.anomalies.add("not_stored_but_not_failed", **what, terminal=events[terminals[-1]].type)
            return
        if terminals:
            ended_as = events[terminals[-1]].type.removeprefix("run.")
            if row["status"] not in ACTIVE and ended_as != row["status"]:
                self.anomalies.add("status_mismatch", **what, stream=ended_as)
        if highest != row["attempt"] and not still_open:
            self.anomalies.add("attempt_mismatch", **what, stream=highest, row=row["attempt"])
        if row["status"] == "completed":
            self._text(what, events, row["response_content"] or "")

    def _text(self, what: dict[str, Any], events: list[Entry], stored: str) -> None:
        """The reply as a client following the README assembles it, and the `message`, equal Postgres."""
        start = max((i for i, e in enumerate(events) if e.type == "run.retrying"), default=-1) + 1
        final = max(e.attempt for e in events)
        text = "".join(e.data()["text"] for e in events[start:] if e.type == "token" and e.attempt == final)
        if text != stored:
            self.anomalies.add("text_mismatch", **what, source="tokens", stream=text[-60:], postgres=stored[-60:])
        messages = [e for e in events if e.type == "message"]
        if messages and messages[-1].data().get("content") != stored:
            self.anomalies.add("text_mismatch", **what, source="message")

    # ------------------------------------------------------------------ per client, against XRANGE

    def clients(self, clients: list[SessionClient], streams: dict[str, list[Entry]], tails: dict[str, str]) -> None:
        """`tails`: each stream's newest entry when the clients were told to catch up (later ones are not owed)."""
        total = resumed = 0
        for client in clients:
            stream = streams.get(client.session_id, [])
            got = [r for r in client.received if r.type != "stream.reset"]
            resets = len(client.received) - len(got)
            if resets:
                self.anomalies.add("stream_reset", session=client.session_id, n=resets)
            total += len(got)
            resumed += max(0, len(client.connections) - 1)
            where = {"client": client.index, "session": client.session_id}
            self.compare(where, got, stream, parse_id(tails.get(client.session_id, "0-0")))
        self.figures["entries"] = {
            "in_streams": sum(len(s) for s in streams.values()),
            "received": total,
            "connections_resumed": resumed,
        }

    def compare(
        self, where: dict[str, Any], got: list[Received], stream: list[Entry], tail: tuple[int, int] | None
    ) -> None:
        """The ids received equal the stream's ids up to `tail` (None: all of them), in order; the frames
        equal the entries."""
        if tail is None:
            tail = parse_id(stream[-1].id) if stream else (0, 0)
        by_id = {e.id: e for e in stream}
        phantom = [r.id for r in got if r.id not in by_id]
        if phantom:
            self.anomalies.add("sse_not_in_stream", **where, n=len(phantom), first=phantom[0])
        bad = [r.id for r in got if r.id in by_id and r.data.encode() != by_id[r.id].json]
        if bad:
            self.anomalies.add("sse_content_mismatch", **where, n=len(bad), first=bad[0])
        ids = [r.id for r in got if r.id in by_id and parse_id(r.id) <= tail]
        expected = [e.id for e in stream if parse_id(e.id) <= tail]
        if ids == expected:
            return
        seen: Counter[str] = Counter(ids)
        dups = [i for i, n in seen.items() if n > 1]
        if dups:
            self.anomalies.add("sse_duplicate", **where, n=sum(seen[i] - 1 for i in dups), first=dups[0])
        if any(parse_id(a) >= parse_id(b) for a, b in pairwise(ids)):
            self.anomalies.add("sse_out_of_order", **where)
        last = max((parse_id(i) for i in ids), default=(0, 0))
        missing = [i for i in expected if i not in seen and parse_id(i) <= last]
        if missing:
            self.anomalies.add("sse_gap", **where, n=len(missing), first=missing[0])
        behind = [i for i in expected if parse_id(i) > last]
        if behind:
            self.anomalies.add("sse_behind", **where, n=len(behind), first=behind[0])

    # ------------------------------------------------------------------ faults

    def kills(
        self, kills: list[dict[str, Any]], by_request: dict[str, list[Entry]], clients: list[SessionClient]
    ) -> None:
        """Worker kill -9 -> the next token of a request that worker was running (written, and received)."""
        receipts: dict[str, float] = {}
        for client in clients:
            for r in client.received:
                receipts.setdefault(r.id, r.at)
        written: list[float] = []
        received: list[float] = []
        affected = unfinished = 0
        on_killed: set[str] = set()
        for kill in kills:
            kill_ms = kill["at"] * 1000
            kill["next_token_s"] = mine = []
            for request_id, attempt in running_at_kill(kill["log"]).items():
                on_killed.add(request_id)
                events = by_request.get(request_id, [])
                if any(e.attempt > attempt and e.ms < kill_ms for e in events):
                    continue  # already superseded before the kill: the kill did not stop it
                after = [e for e in events if e.type == "token" and e.attempt > attempt and e.ms >= kill_ms]
                if not after:
                    if any(e.attempt > attempt for e in events) or not any(e.type == "done" for e in events):
                        unfinished += 1
                    continue
                affected += 1
                written.append((after[0].ms - kill_ms) / 1000)
                mine.append(round(written[-1], 2))
                if after[0].id in receipts:
                    received.append(receipts[after[0].id] - kill["at"])
        # A retry no kill explains: a live worker's attempt taken from it (its lease lapsed in a Postgres pause
        # longer than the lease, or a reaper took it for gone). Nothing is lost, but the reply ran twice.
        retried = {r for r, events in by_request.items() if any(e.type == "run.retrying" for e in events)}
        unexplained = sorted(retried - on_killed)
        self.figures["kill_to_next_token"] = {
            "written": spread(written),
            "received": spread(received),
            "affected_requests": affected,
            "retried_without_a_token": unfinished,
            "retried_without_a_kill": len(unexplained),
            "retried_without_a_kill_examples": unexplained[:5],
        }


_JOB = re.compile(r"([←→]) ([0-9a-f-]{36})(?::(\d+))?:process_request")


def running_at_kill(log: Path) -> dict[str, int]:
    """The requests (and attempts) a killed worker had taken and not finished, from its log: ARQ's start
    (→) and end (←) lines of each job, and the runner's own lines (a claim can commit just before the kill,
    before its `run started` line)."""
    running: dict[str, int] = {}
    for line in log.read_bytes().splitlines():
        if not line.startswith(b"{"):
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        msg, request_id = entry.get("msg") or "", entry.get("request_id")
        if job := _JOB.search(msg):
            arrow, request_id, attempt = job.groups()
            if arrow == "→":
                running[request_id] = int(attempt or 1)
            else:
                running.pop(request_id, None)
            continue
        if not request_id:
            continue
        if msg == "run started":
            running[request_id] = int(entry.get("attempt") or 1)
        elif msg in ("run finished", "lease lost; abandoning attempt", "run handed back"):
            running.pop(request_id, None)
    return running
