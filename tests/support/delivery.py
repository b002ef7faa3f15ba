"""A dispatcher process and the local servers deliveries go to, shared by the delivery tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from cli.dev.embedded import free_port
from common.delivery.jobs import DeliveryJob
from common.delivery.verification import VerificationJob
from common.platform import db
from common.platform.settings import Settings
from common.queue import enqueue as queue
from common.streams.protocol import connect as connect_streams
from common.streams.writer import StreamWriter
from dispatcher import jobs
from dispatcher.runtime import DispatcherRuntime
from dispatcher.verification import send_verification
from tests.conftest import Stack, wait_until
from tests.fakes.http_receiver import Receiver
from tests.support.streams import read_until


class Mailbox:
    """aiosmtpd handler: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


@dataclass
class Dispatchers:
    stack: Stack
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> subprocess.Popen[bytes]:
        proc = self.stack._spawn(
            "dispatcher", [sys.executable, "-m", "cli.main", "dispatcher"], {**self.stack.env, **self.env}
        )
        log = self.stack._logs[-1]
        self.procs.append(proc)
        wait_until(
            lambda: proc.poll() is not None or "dispatcher ready" in log.read_text(),
            60,
            f"dispatcher to start (log: {log})",
        )
        assert proc.poll() is None, log.read_text()
        return proc

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.procs.clear()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
        self.procs.clear()

    @contextlib.contextmanager
    def replaced_with(self, **env: str) -> Iterator[Dispatchers]:
        """Run a dispatcher with these settings added instead of this one, then this one again."""
        self.stop()
        other = Dispatchers(self.stack, {**self.env, **env})
        other.start()
        try:
            yield other
        finally:
            other.stop()
            self.start()


def smtp_server(tls: ssl.SSLContext | None = None, login: tuple[str, str] | None = None) -> tuple[Controller, Mailbox]:
    """aiosmtpd on a loopback port; with `tls`, STARTTLS is required, and with `login`, AUTH after it."""
    box = Mailbox()

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == login
        return AuthResult(success=ok)

    options: dict[str, Any] = {}
    if tls is not None:
        options.update(tls_context=tls, require_starttls=True)
    if login is not None:
        options.update(authenticator=authenticate, auth_required=True, auth_require_tls=True)
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), server_hostname="127.0.0.1", **options)
    controller.start()
    return controller, box


def smtp_port(controller: Controller) -> int:
    return int(controller.port)


def ask(c: httpx.Client, content: str = "hello delivery") -> dict[str, Any]:
    r = c.post("/api/v1/requests/web", json={"content": content, "new_session": True})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


def delivery_events(
    c: httpx.Client, accepted: dict[str, Any], stop: Callable[[Any], bool], timeout: float = 60
) -> list[dict[str, Any]]:
    """The `delivery.*` events of the request, read from its session stream until `stop(event)`."""
    events = read_until(
        c, accepted["stream_url"], lambda e: e.event.startswith("delivery.") and stop(e.json()), timeout=timeout
    )
    return [e.json() for e in events if e.event.startswith("delivery.")]


def final(e: dict[str, Any]) -> bool:
    """A `delivery.*` event of an attempt that ended for good."""
    return bool(e["data"]["status"] in ("SUCCESS", "FAILED", "EXPIRED"))


def deliveries(c: httpx.Client, user_id: str) -> list[dict[str, Any]]:
    r = c.get(f"/api/v1/users/{user_id}/deliveries", params={"limit": 50})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["deliveries"]
    return rows


def wait_for(predicate: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def message_of(raw: bytes) -> Message:
    import email

    return email.message_from_bytes(raw)


def full_logs(stack: Stack) -> str:
    """Every line every process of the stack logged (Stack.logs() keeps only each file's tail)."""
    return "\n".join(p.read_text(errors="replace") for p in stack._logs if p.exists())


@contextlib.asynccontextmanager
async def dispatcher_runtime(settings: Settings) -> AsyncIterator[DispatcherRuntime]:
    """A dispatcher's runtime in this process, against the test's servers."""
    streams = connect_streams(settings.stream_redis_url, cluster=False, max_connections=4)
    rt = DispatcherRuntime(
        settings=settings,
        db=await db.create_pool(settings.database_url),
        streams=streams,
        writer=StreamWriter(streams, buckets=settings.stream_buckets, maxlen=1000, ttl_seconds=60),
        queue=await queue.connect(settings.queue_redis_url),
        hub=None,  # type: ignore[arg-type]
        http=httpx.AsyncClient(),
    )
    try:
        yield rt
    finally:
        await rt.http.aclose()
        await rt.queue.aclose()
        await streams.aclose()
        await rt.db.close()


def deliver_now(settings: Settings, job: DeliveryJob) -> str:
    """Run one delivery job in this process (a dispatcher's `deliver`)."""

    async def run() -> str:
        async with dispatcher_runtime(settings) as rt:
            return await jobs.deliver({"rt": rt}, job.model_dump())

    return asyncio.run(run())


def send_code_now(settings: Settings, job: VerificationJob) -> str:
    """Run one `send_verification` job in this process (what a dispatcher does after an override is saved)."""

    async def run() -> str:
        async with dispatcher_runtime(settings) as rt:
            return await send_verification({"rt": rt}, job.model_dump())

    return asyncio.run(run())


def code_in(text: str) -> str:
    """The confirmation code of a verification message."""
    found = re.search(r"confirmation code is (\d{6})", text)
    assert found, text
    return found.group(1)


def verify(c: httpx.Client, uid: str, channel: str, code: str) -> httpx.Response:
    return c.post(f"/api/v1/users/{uid}/integrations/{channel}/verify", json={"code": code})


def whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def user(stack: Stack) -> tuple[httpx.Client, str]:
    uid = f"u-{uuid.uuid4().hex[:8]}"
    return stack.client(uid, f"t-{uuid.uuid4().hex[:8]}"), uid


def webhook_override(c: httpx.Client, uid: str, receiver: Receiver, path: str, **fields: Any) -> str:
    secret = whsec()
    receiver.secrets[path] = secret
    r = c.post(
        f"/api/v1/users/{uid}/integrations",
        json={
            "integration_type": "WEBHOOK",
            "enabled": True,
            "retry_delay_seconds": 1,
            "config": {"url": receiver.base_url + path, "secret": secret},
            **fields,
        },
    )
    assert r.status_code == 201, r.text
    assert secret not in r.text
    return secret
