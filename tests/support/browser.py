"""Real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright for the chat UI.

Playwright never downloads a browser here: it launches the system executable, and the
tests skip with a clear reason where that executable is missing.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Dialog,
    Page,
    expect,
    sync_playwright,
)

from tests.conftest import Stack

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 30_000  # replies, reconnect backoff and a gateway restart all fit in this

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a browser test before any of its fixtures (and so any server) starts."""
    if "browser" in getattr(item, "fixturenames", ()) and not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"Chromium not installed at {CHROMIUM}: apt-get install -y chromium")


@pytest.fixture(scope="module")
def browser(request: pytest.FixtureRequest) -> Iterator[Browser]:
    """Module-scoped: the sync API marks an event loop as running in this thread while it
    lives, so the asyncio-based `stack` starts first and the browser ends with the module."""
    request.getfixturevalue("stack")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageWatch:
    """What a page did that a safe UI never does: dialogs and uncaught script errors."""

    def __init__(self) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []


@pytest.fixture
def watch() -> PageWatch:
    return PageWatch()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext, watch: PageWatch) -> Iterator[Page]:
    page = context.new_page()

    def on_dialog(dialog: Dialog) -> None:
        watch.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: watch.errors.append(str(error)))
    yield page
    assert watch.errors == [], f"uncaught errors in the page: {watch.errors}"


class CuttingProxy:
    """A loopback TCP proxy in front of the gateway that can cut every connection at once
    (with a reset, like a network drop or a gateway restart) and refuse new ones for a while."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.refusing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Reset all open connections and refuse new ones until restore()."""
        with self.lock:
            self.refusing = True
            doomed, self.sockets = self.sockets, set()
        for sock in doomed:
            _reset(sock)

    def restore(self) -> None:
        self.refusing = False

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                _reset(client)
                continue
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets |= {client, server}
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Abort a connection with a TCP reset. shutdown() first wakes a thread blocked in
    recv() on it, which would otherwise keep the socket open past close()."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def cutting_proxy(stack: Stack) -> Iterator[CuttingProxy]:
    url = urlsplit(stack.base_url)
    proxy = CuttingProxy((url.hostname or "127.0.0.1", url.port or 80))
    yield proxy
    proxy.close()
