"""A TCP proxy that a test can cut and restore, to make Postgres or Redis "go down" for a gateway."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from urllib.parse import urlsplit

from cli.dev.embedded import free_port


class CuttableProxy:
    def __init__(self, target_host: str, target_port: int | None, unix_path: str | None = None) -> None:
        self.target = (target_host, target_port, unix_path)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0  # accepted so far
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.restore()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port, unix_path = self.target
        try:
            if unix_path:
                up_reader, up_writer = await asyncio.open_unix_connection(unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def restore(self) -> None:
        async def start() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        self._run(start())

    def cut(self) -> None:
        """Refuse new connections and drop the open ones, as a crashed server would."""

        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            self.writers.clear()

        self._run(stop())

    def drop(self) -> None:
        """Drop the open connections but keep accepting new ones, as a flaky network would."""

        async def abort() -> None:
            for writer in self.writers:
                writer.transport.abort()
            self.writers.clear()

        self._run(abort())

    def close(self) -> None:
        self.cut()

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)


def proxy_postgres(database_url: str) -> tuple[CuttableProxy, str]:
    """A proxy to the server of `database_url` and the URL that goes through it."""
    parts = urlsplit(database_url)
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    socket_dir = query.get("host")
    if socket_dir:
        proxy = CuttableProxy("", None, f"{socket_dir}/.s.PGSQL.{parts.port or 5432}")
    else:
        proxy = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    user = parts.username or "postgres"
    password = f":{parts.password}" if parts.password else ""
    return proxy, f"postgresql://{user}{password}@127.0.0.1:{proxy.port}{parts.path}"


def proxy_redis(redis_url: str) -> tuple[CuttableProxy, str]:
    parts = urlsplit(redis_url)
    proxy = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    return proxy, f"redis://127.0.0.1:{proxy.port}{parts.path}"
