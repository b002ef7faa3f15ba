"""Pure ASGI middleware: body size limit, correlation id, request metrics and security headers."""

from __future__ import annotations

import logging
import time
import uuid

import orjson
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.platform.logging import correlation_id

log = logging.getLogger("relaygate.access")

HTTP_REQUESTS = Counter("relaygate_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "relaygate_http_request_seconds", "HTTP request latency (to response start)", ["method", "route"]
)


# No MIME sniffing and no framing (clickjacking), on every answer of the UI and the API.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
)


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response start (a header the app set itself is kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {bytes(name).lower() for name, _ in headers}
                message["headers"] = headers + [h for h in SECURITY_HEADERS if h[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _reject(send: Send, status: int, error: str, detail: str) -> None:
    body = orjson.dumps({"error": error, "detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-correlation-id", b"").decode("latin-1")[:128]
        cid = incoming if incoming.isprintable() and incoming else uuid.uuid4().hex
        token = correlation_id.set(cid)
        limit = self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, 413, "payload_too_large", f"request body exceeds {limit} bytes")
            return
        received = 0
        started = time.perf_counter()
        status = 500
        rejected = False

        async def limited_receive() -> Message:
            # A body without Content-Length (chunked) is counted as it arrives. Over the limit the
            # 413 goes out at once and the app sees a disconnect: whatever it makes of that (FastAPI
            # would say 400) is dropped.
            nonlocal received, rejected, status
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    rejected, status = True, 413
                    await _reject(send_with_cid, 413, "payload_too_large", f"request body exceeds {limit} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def send_with_cid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-correlation-id", cid.encode())]
            await send(message)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if rejected:
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-correlation-id", cid.encode())]
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                HTTP_LATENCY.labels(scope["method"], path).observe(time.perf_counter() - started)
                HTTP_REQUESTS.labels(scope["method"], path, str(status)).inc()
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except Exception:
            if not rejected:
                raise
        finally:
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )
            correlation_id.reset(token)
