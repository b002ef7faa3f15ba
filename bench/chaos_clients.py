"""The chaos suite's clients.

Each follows its own session over SSE through a random live gateway, sends requests into it one
after another (the next once the previous one's `done` arrived), and resumes with `Last-Event-ID`
whenever its stream ends: after a drain's `reconnect` frame, a dropped connection or a timeout.
A POST that fails is repeated with the same `Idempotency-Key` through another gateway. Everything
received is kept (entry id, type, request, attempt, the frame's data, when) for the verification.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from chaos_report import Anomalies

from cli.sse import aiter_events

STREAM_TIMEOUT = httpx.Timeout(5.0, read=45.0)
POST_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


@dataclass
class Received:
    id: str
    type: str
    request_id: str
    attempt: int
    data: str
    at: float


@dataclass
class Turn:
    """One request a client sent, from its first POST to its `done`."""

    content: str
    tokens: int
    key: str
    posted_at: float
    request_id: str = ""
    post_tries: int = 0
    done_at: float | None = None
    cancel_sent: bool = False


@dataclass
class Connection:
    """One SSE response with status 200: which gateway, when, and how it ended."""

    port: int
    opened: float
    closed: float = 0.0
    cause: str = ""


@dataclass
class Traffic:
    """What all clients saw besides events: refusals, transport errors, statuses that are anomalies."""

    anomalies: Anomalies
    counts: Counter[str] = field(default_factory=Counter)

    def status(self, route: str, response: httpx.Response) -> None:
        code = response.status_code
        self.counts[f"{route} {code}"] += 1
        if code == 503:
            return
        kind = "http_5xx" if code >= 500 else "http_unexpected_status"
        self.anomalies.add(kind, route=route, status=code, body=response.text[:200])


@dataclass
class Pace:
    tokens: tuple[int, int]
    rate: float
    think: float
    cancel_share: float = 0.0  # of requests (or runs) cancelled a moment after they were accepted


class GatewayClient:
    """What every chaos client does: pick a random live gateway, POST until answered, read an SSE stream
    that resumes after its last entry, and cancel what it sent a moment later."""

    def __init__(
        self,
        index: int,
        http: httpx.AsyncClient,
        ports: Callable[[], list[int]],
        token: str,
        traffic: Traffic,
        seed: int,
    ) -> None:
        self.index = index
        self.http = http
        self.ports = ports
        self.auth = {"Authorization": f"Bearer {token}"}
        self.traffic = traffic
        self.rng = random.Random(seed)
        self.cancels: set[asyncio.Task[None]] = set()

    async def port(self) -> int:
        while True:
            live = self.ports()
            if live:
                return self.rng.choice(live)
            await asyncio.sleep(0.1)

    async def send(
        self,
        route: str,
        path: str,
        ok: tuple[int, ...],
        body: Any = None,
        headers: dict[str, str] | None = None,
        on_try: Callable[[], None] | None = None,
        *,
        method: str = "POST",
    ) -> httpx.Response:
        """Send (POST unless `method` says) through a random live gateway until answered with one of `ok`. A
        transport error is counted, any other status too (an anomaly unless 503); both are retried, after
        `Retry-After` when given."""
        while True:
            port = await self.port()
            if on_try is not None:
                on_try()
            try:
                r = await self.http.request(
                    method,
                    f"http://127.0.0.1:{port}{path}",
                    json=body,
                    headers=headers or self.auth,
                    timeout=POST_TIMEOUT,
                )
            except httpx.TransportError as exc:
                self.traffic.counts[f"{route} {type(exc).__name__}"] += 1
                await asyncio.sleep(0.2)
                continue
            if r.status_code in ok:
                return r
            self.traffic.status(route, r)
            retry_after = r.headers.get("Retry-After", "")
            await asyncio.sleep(min(float(retry_after), 2.0) if retry_after.isdigit() else 0.5)

    async def read(
        self,
        route: str,
        path: str,
        last_id: str | None,
        connections: list[Connection],
        on_entry: Callable[[Received], None],
        where: dict[str, Any],
    ) -> None:
        """One SSE response of `path` through a random live gateway, from after `last_id`: each entry to
        `on_entry` until the response ends (recorded in `connections`, with how). A frame that is not an
        entry (no id, or data that is not JSON) is an anomaly, reported with `where`."""
        port = await self.port()
        headers = {**self.auth, "Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        conn: Connection | None = None
        try:
            async with self.http.stream(
                "GET", f"http://127.0.0.1:{port}{path}", headers=headers, timeout=STREAM_TIMEOUT
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    self.traffic.status(route, response)
                    await asyncio.sleep(0.2)
                    return
                conn = Connection(port, time.time(), cause="closed")
                connections.append(conn)
                async for event in aiter_events(response):
                    if event.id is None and event.event == "reconnect":
                        conn.cause = "drain"
                        break
                    received = self._entry(where, event.id, event.event, event.data)
                    if received is not None:
                        on_entry(received)
        except httpx.TimeoutException:
            if conn is None:
                self.traffic.counts[f"{route} connect timeout"] += 1
            else:
                conn.cause = "timeout"
        except (httpx.TransportError, httpx.StreamError):
            if conn is None:
                self.traffic.counts[f"{route} connect error"] += 1
            else:
                conn.cause = "dropped"
        if conn is not None:
            conn.closed = time.time()
        else:
            await asyncio.sleep(0.1)

    def _entry(self, where: dict[str, Any], entry_id: str | None, kind: str, data: str) -> Received | None:
        try:
            body: dict[str, Any] = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.traffic.anomalies.add("bad_frame", **where, id=entry_id, event=kind, data=data[:200])
            return None
        if entry_id is None:
            self.traffic.anomalies.add("frame_without_id", **where, event=kind, data=data[:200])
            return None
        return Received(
            entry_id, kind, str(body.get("request_id") or ""), int(body.get("attempt") or 0), data, time.time()
        )

    def cancel_later(self, path: str, delay: float) -> None:
        """After `delay` s, POST `path` (a cancel) until answered: 202, or 409 when it ended first."""

        async def cancel() -> None:
            await asyncio.sleep(delay)
            r = await self.send("cancel", path, (202, 409))
            self.traffic.counts[f"cancel {r.status_code}"] += 1

        task = asyncio.create_task(cancel())
        self.cancels.add(task)
        task.add_done_callback(self.cancels.discard)


class SessionClient(GatewayClient):
    def __init__(
        self,
        index: int,
        http: httpx.AsyncClient,
        ports: Callable[[], list[int]],
        token: str,
        traffic: Traffic,
        pace: Pace,
        seed: int,
    ) -> None:
        super().__init__(index, http, ports, token, traffic, seed)
        self.pace = pace
        self.session_id = ""
        self.received: list[Received] = []
        self.last_id: str | None = None
        self.accepted: set[str] = set()
        self.done: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Event] = {}
        self.turns: list[Turn] = []
        self.connections: list[Connection] = []
        self.reader: asyncio.Task[None] | None = None

    async def open_session(self) -> None:
        r = await self.send("session", "/api/v1/sessions", (201,), body={})
        self.session_id = r.json()["session_id"]
        self.reader = asyncio.create_task(self.follow(), name=f"reader-{self.index}")

    def open_requests(self) -> set[str]:
        """Requests this client saw announced on its stream whose `done` it has not seen."""
        return self.accepted - self.done.keys()

    # ------------------------------------------------------------------ reading the session

    async def follow(self) -> None:
        """Read the session's stream forever, resuming after the last entry received."""
        url = f"/api/v1/sessions/{self.session_id}/stream"
        while True:
            await self.read("stream", url, self.last_id, self.connections, self._receive, {"session": self.session_id})

    def _receive(self, entry: Received) -> None:
        self.received.append(entry)
        request_id, kind = entry.request_id, entry.type
        self.last_id = entry.id
        if kind == "request.accepted":
            self.accepted.add(request_id)
        elif kind == "done" and request_id not in self.done:
            self.done[request_id] = time.time()
            waiter = self.waiters.pop(request_id, None)
            if waiter is not None:
                waiter.set()

    # ------------------------------------------------------------------ sending

    async def converse(self, stop: asyncio.Event) -> None:
        """Send requests one after another until `stop`; each waits for the previous one's `done`."""
        turn_no = 0
        while not stop.is_set():
            turn_no += 1
            tokens = self.rng.randint(*self.pace.tokens)
            turn = Turn(
                f"chaos client {self.index} turn {turn_no} {uuid.uuid4().hex[:8]}",
                tokens,
                uuid.uuid4().hex,
                time.time(),
            )
            self.turns.append(turn)
            turn.request_id = await self._post(turn)
            if self.rng.random() < self.pace.cancel_share:
                turn.cancel_sent = True
                self.cancel_later(f"/api/v1/requests/{turn.request_id}/cancel", self.rng.uniform(0.1, 3.0))
            if turn.request_id not in self.done:
                waiter = self.waiters.setdefault(turn.request_id, asyncio.Event())
                await waiter.wait()
            turn.done_at = self.done[turn.request_id]
            pause = self.rng.uniform(0, self.pace.think)
            if pause:
                try:
                    await asyncio.wait_for(stop.wait(), pause)
                except TimeoutError:
                    pass

    async def _post(self, turn: Turn) -> str:
        body = {
            "content": turn.content,
            "session_id": self.session_id,
            "metadata": {"offline": {"tokens": turn.tokens, "tokens_per_second": self.pace.rate}},
        }

        def counted() -> None:
            turn.post_tries += 1

        headers = {**self.auth, "Idempotency-Key": turn.key}
        r = await self.send("post", "/api/v1/requests/web", (202,), body, headers, counted)
        return str(r.json()["request_id"])
