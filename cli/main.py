"""The `relaygate` command."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click
import httpx

from cli import approvals
from cli.dev.command import read_state, run_dev, write_state
from cli.dev.embedded import EmbeddedPostgres
from cli.sse import SseEvent, iter_events
from common.platform import db
from common.platform.credentials import AuthError, create_api_key, list_api_keys, mint_token, revoke_api_key
from common.platform.settings import Settings, get_settings

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_UNAVAILABLE = 3
EXIT_CANCELLED = 4


@click.group()
def main() -> None:
    """relaygate: the request and streaming layer between people and AI agents."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="agent worker processes")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="how the processes log: readable lines, or one JSON object per line as in production",
)
def dev(host: str, port: int, workers: int, log_format: str) -> None:
    """Run everything locally: embedded Postgres and Valkey unless DATABASE_URL / REDIS_URL are set."""
    run_dev(get_settings(), host, port, workers, log_format)


def _database_url(settings: Settings) -> tuple[str, EmbeddedPostgres | None]:
    if settings.database_url:
        return settings.database_url, None
    postgres = EmbeddedPostgres(settings.data_dir.resolve())
    postgres.ensure_database()
    return postgres.url, postgres


@main.command()
def migrate() -> None:
    """Apply database migrations (to DATABASE_URL, or the embedded server's data folder)."""
    url, postgres = _database_url(get_settings())
    try:
        applied = asyncio.run(db.migrate(url))
    finally:
        if postgres:
            postgres.stop()
    click.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")


@main.command()
@click.option("--user", "user_id", default="dev", show_default=True)
@click.option("--tenant", "tenant_id", default="dev", show_default=True)
@click.option("--ttl", default=24 * 3600, show_default=True, type=int, help="seconds")
@click.option("--scope", "scopes", multiple=True)
def token(user_id: str, tenant_id: str, ttl: int, scopes: tuple[str, ...]) -> None:
    """Mint a development JWT (HS256, JWT_SECRET_KEY or the `relaygate dev` secret)."""
    settings = get_settings()
    if not settings.jwt_secret_key.get_secret_value():
        from cli.dev.embedded import dev_secret

        settings = settings.model_copy(
            update={"jwt_secret_key": type(settings.jwt_secret_key)(dev_secret(settings.data_dir.resolve()))}
        )
    try:
        click.echo(mint_token(settings, user_id=user_id, tenant_id=tenant_id, ttl_seconds=ttl, scopes=list(scopes)))
    except AuthError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def apikey() -> None:
    """Manage API keys (stored hashed in Postgres)."""


@apikey.command("create")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--user", "user_id", required=True, help="the user (or tool id) the key acts as")
@click.option(
    "--tool",
    is_flag=True,
    help="a tool key: gets the act-as-user scope (requests for any user of its "
    "tenant, each in a new session unless it also holds join-user-sessions)",
)
@click.option("--scope", "scopes", multiple=True)
@click.option("--name", default="")
def apikey_create(tenant_id: str, user_id: str, tool: bool, scopes: tuple[str, ...], name: str) -> None:
    """Create a key and print it once."""
    url, postgres = _database_url(get_settings())

    async def create() -> tuple[str, str]:
        await db.migrate(url)
        pool = await db.create_pool(url, max_size=1)
        try:
            return await create_api_key(
                pool,
                tenant_id=tenant_id,
                user_id=user_id,
                kind="tool" if tool else "user",
                scopes=list(scopes),
                name=name,
            )
        finally:
            await pool.close()

    try:
        key_id, key = asyncio.run(create())
    finally:
        if postgres:
            postgres.stop()
    click.echo(f"key id {key_id} (store the key now; it is not shown again):", err=True)
    click.echo(key)


def _with_database(work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run `work` on a one-connection pool of DATABASE_URL (or the embedded server), migrated first."""
    url, postgres = _database_url(get_settings())

    async def run() -> T:
        await db.migrate(url)
        pool = await db.create_pool(url, max_size=1)
        try:
            return await work(pool)
        finally:
            await pool.close()

    try:
        return asyncio.run(run())
    finally:
        if postgres:
            postgres.stop()


@apikey.command("list")
@click.option("--tenant", "tenant_id", default=None, help="only this tenant's keys")
def apikey_list(tenant_id: str | None) -> None:
    """List keys (id, tenant, user, kind, scopes, name, created, revoked); never the keys themselves."""
    keys = _with_database(lambda pool: list_api_keys(pool, tenant_id))
    for k in keys:
        revoked = f"revoked {k['revoked_at']:%Y-%m-%d %H:%M}" if k["revoked_at"] else "active"
        click.echo(
            "\t".join(
                [
                    k["key_id"],
                    k["tenant_id"],
                    k["user_id"],
                    k["kind"],
                    ",".join(k["scopes"]) or "-",
                    k["name"] or "-",
                    f"{k['created_at']:%Y-%m-%d %H:%M}",
                    revoked,
                ]
            )
        )


@apikey.command("revoke")
@click.argument("key_id")
@click.option("--tenant", "tenant_id", default=None, help="refuse unless the key belongs to this tenant")
def apikey_revoke(key_id: str, tenant_id: str | None) -> None:
    """Revoke a key; gateways stop accepting it within API_KEY_CACHE_SECONDS."""
    if not _with_database(lambda pool: revoke_api_key(pool, key_id, tenant_id)):
        raise click.ClickException(f"no active key {key_id!r}" + (f" in tenant {tenant_id!r}" if tenant_id else ""))
    click.echo(f"revoked {key_id}")


def _client_config(url: str | None, token_: str | None) -> tuple[str, str, Path]:
    settings = get_settings()
    home = settings.data_dir.resolve()
    state = read_state(home)
    url = url or state.get("url")
    token_ = token_ or state.get("token")
    if not url or not token_:
        raise click.UsageError(
            "no gateway known: run `make dev`, or pass --url and --token (or set RELAYGATE_URL and RELAYGATE_TOKEN)"
        )
    return url.rstrip("/"), token_, home


def _http_error(response: httpx.Response) -> click.ClickException:
    response.read()
    try:
        body = response.json()
        detail = body.get("detail")
        message = f"{body.get('error', 'error')}: {json.dumps(detail) if not isinstance(detail, str) else detail}"
    except ValueError:
        message = response.text[:200]
    error = click.ClickException(f"HTTP {response.status_code} {message}")
    error.exit_code = EXIT_UNAVAILABLE if response.status_code >= 500 else EXIT_FAILED
    return error


URL_OPTION = click.option("--url", envvar="RELAYGATE_URL", help="gateway URL (default: the one `make dev` runs)")
TOKEN_OPTION = click.option("--token", "token_", envvar="RELAYGATE_TOKEN", help="JWT or API key")


@main.command()
@click.argument("text")
@click.option("--session", "session_id", help="continue this session")
@click.option("--new", "new", is_flag=True, help="start a new session")
@click.option("--agent", "agent_id", help="ask this agent explicitly")
@URL_OPTION
@TOKEN_OPTION
def chat(
    text: str, session_id: str | None, new: bool, agent_id: str | None, url: str | None, token_: str | None
) -> None:
    """Send TEXT and print the reply token by token as it streams (a line per tool step; a tool call that
    needs approval asks you first)."""
    url, token_, home = _client_config(url, token_)
    state = read_state(home)
    if not session_id and not new:
        session_id = state.get("cli_session")
    body: dict[str, Any] = {"content": text, "metadata": {"terminal": "relaygate-cli", "command": "chat"}}
    if session_id:
        body["session_id"] = session_id
    body["new_session"] = new or not session_id
    if agent_id:
        body["agent_id"] = agent_id
    headers = {"Authorization": f"Bearer {token_}", "Accept": "text/event-stream"}
    status = "failed"
    try:
        with httpx.stream(
            "POST", f"{url}/api/v1/requests/cli", json=body, headers=headers, timeout=httpx.Timeout(10, read=None)
        ) as response:
            if response.status_code >= 400:
                raise _http_error(response)
            for event in iter_events(response):
                status = _print_event(event, state, home) or status
                if event.event == "tool.approval_required":
                    payload = event.json()
                    approvals.ask(url, token_, payload["request_id"], payload.get("data", {}))
    except httpx.HTTPError as exc:
        error = click.ClickException(f"cannot reach the gateway at {url}: {exc}")
        error.exit_code = EXIT_UNAVAILABLE
        raise error from None
    if status == "cancelled":
        sys.exit(EXIT_CANCELLED)
    if status != "completed":
        sys.exit(EXIT_FAILED)


def _tool_line(kind: str, data: dict[str, Any]) -> str:
    """One compact line per tool step: the call with its arguments, then its output or error (cut at 200)."""
    replayed = " (replayed)" if data.get("replayed") else ""
    if kind == "tool.call":
        text = f"[tool {data.get('tool')} {json.dumps(data.get('arguments'), separators=(',', ':'))}]"
    elif kind == "tool.approval_required":
        text = f"[tool {data.get('tool')} waits for approval of call {data.get('call_id')}]"
    elif data.get("ok"):
        text = f"[tool {data.get('tool')} -> {data.get('output')}]"
    else:
        text = f"[tool {data.get('tool')} failed: {data.get('error')}]"
    text = " ".join(text.split())
    return (text if len(text) <= 200 else text[:198] + "…]") + replayed


def _print_event(event: SseEvent, state: dict[str, str], home: Path) -> str | None:
    payload = event.json()
    data = payload.get("data", {})
    if event.event == "request.accepted":
        state["cli_session"] = data["session_id"]
        write_state(home, state)
    elif event.event == "token":
        click.echo(data.get("text", ""), nl=False)
    elif event.event in ("tool.call", "tool.result", "tool.approval_required"):
        click.echo(_tool_line(event.event, data), err=True)
    elif event.event == "run.retrying":
        click.echo(f"\n[worker lost; retrying, attempt {data.get('attempt')}]", err=True)
    elif event.event == "run.failed":
        click.echo(f"\nerror: {data.get('error')}", err=True)
    elif event.event == "run.cancelled":
        click.echo(f"\n[cancelled: {data.get('reason')}]", err=True)
    elif event.event == "done":
        click.echo("")
        click.echo(f"[session {state.get('cli_session')}]", err=True)
        return str(data.get("status"))
    return None


@main.command()
@click.argument("session_id")
@click.option("--from", "from_id", help="resume after this stream id")
@URL_OPTION
@TOKEN_OPTION
def tail(session_id: str, from_id: str | None, url: str | None, token_: str | None) -> None:
    """Follow a session's stream (reconnecting with Last-Event-ID) until Ctrl-C."""
    url, token_, _ = _client_config(url, token_)
    last = from_id
    try:
        while True:
            last = _follow(url, token_, session_id, last)
            time.sleep(1)
    except KeyboardInterrupt:
        return


def _follow(url: str, token_: str, session_id: str, last: str | None) -> str | None:
    """Print the stream until it ends or drops; returns the last id seen, to resume from."""
    headers = {"Authorization": f"Bearer {token_}", "Accept": "text/event-stream"}
    if last:
        headers["Last-Event-ID"] = last
    try:
        with httpx.stream(
            "GET", f"{url}/api/v1/sessions/{session_id}/stream", headers=headers, timeout=httpx.Timeout(10, read=None)
        ) as response:
            if response.status_code >= 400:
                raise _http_error(response)
            for event in iter_events(response):
                last = event.id or last
                click.echo(f"{event.id} {event.event} {json.dumps(event.json().get('data'))}")
    except httpx.HTTPError as exc:
        click.echo(f"[disconnected: {exc}; reconnecting]", err=True)
    return last


@main.command()
@click.option("--feature", default=None, help="serve this feature's queue (default: FEATURE or 'default')")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="worker processes under one supervisor, one per core (default: WORKER_PROCESSES or 1)",
)
def worker(feature: str | None, processes: int | None) -> None:
    """Run an agent worker (N processes on one queue with --processes N)."""
    settings = get_settings()
    count = processes or settings.worker_processes
    if count > 1:
        from cli.supervisor import supervise

        supervise(settings, feature, count)
        return
    from workers.main import run

    run(feature)


@main.command()
def dispatcher() -> None:
    """Run a dispatcher: delivers replies to Slack, email, webhooks and SMS (run several to scale)."""
    from dispatcher.main import run

    run()


@main.command()
@click.argument("action", type=click.Choice(["create", "delete", "cleanup", "list"]))
@click.argument("feature_id", required=False)
@click.option(
    "--idle-seconds",
    type=int,
    default=None,
    help="cleanup: idle time before removal (default ORCHESTRATOR_IDLE_SECONDS)",
)
def orchestrator(action: str, feature_id: str | None, idle_seconds: int | None) -> None:
    """Manage per-feature workers on Kubernetes: create/delete FEATURE_ID, cleanup idle ones, list."""
    from orchestrator.handler import handle

    event: dict[str, Any] = {"action": action, "feature_id": feature_id}
    if idle_seconds is not None:
        event["idle_seconds"] = idle_seconds
    result = asyncio.run(handle(event))
    click.echo(json.dumps(result, indent=2))
    if "error" in result:
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
