"""CORS from a real browser: a page on another loopback origin streams a reply from the gateway.

The page is served by its own HTTP server; the gateway (a second one, sharing the stack's stores and
workers) allows exactly that origin. The same page under `localhost` is another origin, which the
browser must refuse.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.conftest import Stack
from workers.offline_model import compose_reply

pytestmark = pytest.mark.timeout(180)

PAGE = b"""<!doctype html><html><head><title>another origin</title></head><body>
<script>
// What a chat UI on another origin does: POST with a bearer token, read the SSE body as it arrives.
async function streamChat(gateway, token, chatId, text, metadata) {
  const response = await fetch(gateway + '/api/chat', {
    method: 'POST',
    headers: { 'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json' },
    body: JSON.stringify({ id: chatId, trigger: 'submit-message', metadata,
                           messages: [{ id: 'u1', role: 'user', parts: [{ type: 'text', text }] }] }),
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '', reply = '', chunks = [], reads = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    reads += 1;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf('\\n\\n')) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (!frame.startsWith('data: ') || frame === 'data: [DONE]') continue;
      const chunk = JSON.parse(frame.slice(6));
      chunks.push(chunk.type);
      if (chunk.type === 'text-delta') reply += chunk.delta;
    }
  }
  return { status: response.status, reply, chunks, reads,
           protocol: response.headers.get('x-vercel-ai-ui-message-stream'),
           session: response.headers.get('x-session-id'),
           correlation: response.headers.get('x-correlation-id') };
}
</script></body></html>"""


class PageServer:
    """Serves PAGE on a loopback port: `http://127.0.0.1:<port>` and `http://localhost:<port>` are two origins."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def page_server() -> Iterator[PageServer]:
    server = PageServer()
    yield server
    server.close()


@pytest.fixture
def cors_gateway(stack: Stack, page_server: PageServer, tmp_path: Path) -> Iterator[Stack]:
    """A gateway that allows the page's 127.0.0.1 origin only."""
    gateway = Stack(stack.infra, tmp_path, {**stack.env, "CORS_ALLOW_ORIGINS": f"http://127.0.0.1:{page_server.port}"})
    try:
        gateway.start_gateway()
        yield gateway
    finally:
        gateway.stop()


def stream_from(page: Page, gateway: Stack, token: str, text: str) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(
        "([gateway, token, chatId, text]) => streamChat(gateway, token, chatId, text,"
        " {offline: {tokens: 60, tokens_per_second: 60}})",
        [gateway.base_url, token, f"cors-{uuid.uuid4().hex[:8]}", text],
    )
    return result


def test_a_page_on_another_origin_streams_a_reply(page: Page, page_server: PageServer, cors_gateway: Stack) -> None:
    token = cors_gateway.mint(f"cors-{uuid.uuid4().hex[:8]}", "tenant-cors")
    page.goto(f"http://127.0.0.1:{page_server.port}/")
    result = stream_from(page, cors_gateway, token, "Hello from another origin")
    assert result["status"] == 200
    assert result["reply"] == "".join(compose_reply("Hello from another origin", 60))
    assert result["chunks"][0] == "start" and result["chunks"][-1] == "finish"
    assert result["reads"] > 1, "the body arrived in pieces, as it streamed"
    assert result["protocol"] == "v1" and result["session"] and result["correlation"], "exposed headers"


def test_a_page_on_an_origin_not_allowed_is_refused(page: Page, page_server: PageServer, cors_gateway: Stack) -> None:
    token = cors_gateway.mint(f"cors-{uuid.uuid4().hex[:8]}", "tenant-cors")
    page.goto(f"http://localhost:{page_server.port}/")
    error = page.evaluate(
        "([gateway, token]) => streamChat(gateway, token, 'c1', 'hi', {}).then(() => 'allowed', e => e.name)",
        [cors_gateway.base_url, token],
    )
    assert error == "TypeError"
