"""`relaygate dev`: embedded servers, migrations, gateway, agent worker and dispatcher in one command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx

from cli.dev.embedded import EmbeddedPostgres, EmbeddedValkey, dev_secret
from common.platform import db
from common.platform.credentials import mint_token
from common.platform.settings import DEV_CORS_ORIGIN_REGEX, Settings

DEV_STATE = "dev.json"


def write_state(home: Path, state: dict[str, str]) -> None:
    path = home / DEV_STATE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh, indent=2)


def read_state(home: Path) -> dict[str, str]:
    try:
        data: dict[str, str] = json.loads((home / DEV_STATE).read_text())
    except (OSError, ValueError):
        return {}
    return data


def _name(child: subprocess.Popen[bytes]) -> str:
    args = child.args
    return " ".join(str(a) for a in args) if isinstance(args, list) else str(args)


def wait_healthy(url: str, children: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    """Until the gateway at `url` answers /health with 200; a child that exits first is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if child.poll() is not None:
                raise click.ClickException(f"{_name(child)} exited with code {child.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise click.ClickException(f"the gateway did not become healthy at {url} within {timeout:.0f}s")


RESTARTS_PER_MINUTE = 5


@dataclass
class Child:
    """A process `owner` keeps running: restarted when it dies, up to RESTARTS_PER_MINUTE.

    `own_session` keeps a terminal's Ctrl-C from reaching it: only `owner` signals it.
    """

    name: str
    args: list[str]
    env: dict[str, str]
    owner: str = "relaygate dev"
    own_session: bool = False
    process: subprocess.Popen[bytes] = field(init=False)
    restarts: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, env=self.env, start_new_session=self.own_session)

    def revive(self) -> bool:
        """Restart the process if it died; False once it died too often to go on."""
        code = self.process.poll()
        if code is None:
            return True
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        if len(self.restarts) > RESTARTS_PER_MINUTE:
            click.echo(
                f"{self.owner}: the {self.name} exited with code {code} "
                f"{RESTARTS_PER_MINUTE} times in a minute; giving up",
                err=True,
            )
            return False
        click.echo(f"{self.owner}: the {self.name} exited with code {code}; restarting it", err=True)
        self.start()
        return True


def stop_children(children: list[Child], timeout: float = 15) -> None:
    """SIGTERM every child, wait up to `timeout` seconds for all of them, then kill what is left."""
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def _guard(postgres: EmbeddedPostgres | None, valkey: EmbeddedValkey | None) -> subprocess.Popen[bytes] | None:
    """Start cli.dev.guardian, which stops the embedded servers if this process dies without doing it."""
    if postgres is None and valkey is None:
        return None
    args = [sys.executable, "-m", "cli.dev.guardian", str(os.getpid())]
    if postgres is not None:
        args += ["--postgres", str(postgres.data_dir)]
    if valkey is not None:
        args += ["--valkey", str(valkey.process.pid)]
    return subprocess.Popen(args, start_new_session=True)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_dev(settings: Settings, host: str, port: int, workers: int, log_format: str = "text") -> None:
    # Stop everything on Ctrl-C and on SIGTERM, even when started in the background
    # (where a shell starts it with SIGINT ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    home = settings.data_dir.resolve()
    home.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            raise click.ClickException(
                f"port {port} on {host} is already in use: stop what runs there, "
                f"or choose another port (make dev PORT=8001, relaygate dev --port 8001)"
            )
    postgres = valkey = None
    guardian: subprocess.Popen[bytes] | None = None
    children: list[Child] = []
    try:
        database_url, redis_url = settings.database_url, settings.redis_url
        if not database_url:
            click.echo(f"starting embedded PostgreSQL in {home / 'pg'} ...", err=True)
            postgres = EmbeddedPostgres(home)
            postgres.ensure_database()
            database_url = postgres.url
        if not redis_url:
            click.echo(f"starting embedded Valkey in {home / 'valkey'} ...", err=True)
            valkey = EmbeddedValkey(home / "valkey")
            redis_url = valkey.url
        guardian = _guard(postgres, valkey)
        applied = asyncio.run(db.migrate(database_url))
        click.echo(f"migrations: {', '.join(applied) if applied else 'up to date'}", err=True)
        secret = settings.jwt_secret_key.get_secret_value() or dev_secret(home)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "JWT_SECRET_KEY": secret,
            "RELAYGATE_DEV": "true",
            "LOG_FORMAT": log_format,
        }
        if not settings.cors_allow_origins and not settings.cors_allow_origin_regex:
            env["CORS_ALLOW_ORIGIN_REGEX"] = DEV_CORS_ORIGIN_REGEX  # UIs on any local port (a Next.js app on :3000)
        children.append(
            Child(
                "gateway",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "api.main:app",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--no-access-log",
                    "--timeout-graceful-shutdown",
                    "3",
                ],
                env,
            )
        )
        for n in range(workers):
            children.append(Child(f"worker {n + 1}", [sys.executable, "-m", "cli.main", "worker"], env))
        children.append(Child("dispatcher", [sys.executable, "-m", "cli.main", "dispatcher"], env))
        url = f"http://{host}:{port}"
        wait_healthy(url, [c.process for c in children])
        dev_settings = settings.model_copy(update={"jwt_secret_key": type(settings.jwt_secret_key)(secret)})
        token = mint_token(dev_settings, user_id="dev", tenant_id="dev", ttl_seconds=30 * 24 * 3600)
        write_state(home, {**read_state(home), "url": url, "token": token})
        click.echo(
            f"\nrelaygate is running\n"
            f"  gateway   {url}  (chat UI at {url}/ , API schema at {url}/api/v1/openapi.json)\n"
            f"  postgres  {'embedded, ' + str(home / 'pg') if postgres else 'DATABASE_URL'}\n"
            f"  valkey    {'embedded, ' + str(home / 'valkey') if valkey else 'REDIS_URL'}\n"
            f"  model     {settings.llm_model or 'built-in offline model (set LLM_MODEL for a real one)'}\n"
            f"  token     {token}\n\n"
            f'try:  .venv/bin/relaygate chat "Hello there"\n'
            f"Ctrl-C stops everything.\n"
        )
        while all(child.revive() for child in children):
            time.sleep(0.5)
        raise click.ClickException("a process kept exiting; stopping relaygate dev (see its output above)")
    except KeyboardInterrupt:
        click.echo("\nstopping ...", err=True)
    finally:
        stop_children(children)
        if valkey:
            valkey.stop()
        if postgres:
            postgres.stop()
        if guardian is not None:
            guardian.terminate()
