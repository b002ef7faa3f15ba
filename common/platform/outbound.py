"""The one guard for requests to URLs a user can influence (flow `http` tasks, WEBHOOK deliveries).

Only http(s). Every address the host resolves to must be public unless `OUTBOUND_ALLOW_HOSTS` names the
host or a network holding the address. The connection goes to the address that was checked (no second
lookup, so no DNS rebinding) with the name kept in `Host` and TLS SNI; redirects are not followed; the
answer is read as a stream, cut at a size cap, within a time cap. `check` validates a URL when it is
saved, `request` checks it again and sends.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import certifi
import httpx
import orjson

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

_PORTS = {"http": 80, "https": 443}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# RFC 6761: localhost names are the loopback addresses; they are never sent to a DNS server.
_LOCALHOST = ("127.0.0.1", "::1")
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
# Set by relaygate for every request, or hop-by-hop (RFC 9110 §7.6.1): a caller's own value is dropped.
DROPPED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "proxy-authorization",
        "proxy-authenticate",
        "accept-encoding",
    }
)


class OutboundError(Exception):
    """An outbound request that did not happen or did not finish; the message is safe to show a client."""


class Refused(OutboundError):
    """The URL is not allowed: the same URL is refused again, so it is never worth a retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"URL refused: {reason}")
        self.reason = reason


class Unreachable(OutboundError):
    """The host could not be resolved, connected to or read in time; one message for every cause."""


@dataclass(frozen=True)
class Policy:
    """What may be reached: public addresses, plus the allow-list's host names and networks."""

    networks: tuple[Network, ...] = ()
    names: frozenset[str] = frozenset()
    max_response_bytes: int = 1024 * 1024
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class Target:
    """A checked URL: its normalised host and port and the addresses that may be connected to."""

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[str, ...]
    literal: bool


@dataclass(frozen=True)
class Answer:
    """A response read up to the size cap; `truncated` says the body was cut there."""

    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool = False
    encoding: str = "utf-8"

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON (or was cut)."""
        if self.truncated or not self.body:
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    def text(self) -> str:
        try:
            return self.body.decode(self.encoding, errors="replace")
        except LookupError:  # a charset Python does not know
            return self.body.decode("utf-8", errors="replace")


def parse_allow(value: str) -> tuple[tuple[Network, ...], frozenset[str]]:
    """`OUTBOUND_ALLOW_HOSTS` as (networks, host names); ValueError names an entry that is neither."""
    networks: list[Network] = []
    names: set[str] = set()
    for raw in value.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = entry.rstrip(".")
        if not _HOST_NAME.match(name):
            raise ValueError(f"OUTBOUND_ALLOW_HOSTS: {raw.strip()!r} is neither a host name nor a CIDR")
        names.add(name)
    return tuple(networks), frozenset(names)


@functools.cache
def policy(allow: str, max_response_bytes: int, timeout_seconds: float) -> Policy:
    """The policy of these settings (call with `OUTBOUND_ALLOW_HOSTS` and the two caps)."""
    networks, names = parse_allow(allow)
    return Policy(networks, names, max_response_bytes, timeout_seconds)


def _embedded_v4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4 IPv6 address."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def address_problem(ip: Address) -> str | None:
    """Why this address is not a public one (e.g. "loopback"), or None when it is."""
    inner = _embedded_v4(ip)
    if inner is not None:
        return address_problem(inner)
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("shared (CGNAT)", ip in _CGNAT),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("non-public", not ip.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def _allowed(ip: Address, networks: tuple[Network, ...]) -> bool:
    inner = _embedded_v4(ip)
    return any(ip in net or (inner is not None and inner in net) for net in networks)


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _numeric(host: str, port: int) -> str | None:
    """The address a numeric host stands for, in any form the C library accepts (`127.1`, `0x7f.1`,
    `2130706433`), without a lookup; None for a host name."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return str(infos[0][4][0])


def _parse(url: str) -> tuple[httpx.URL, str, int]:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise Refused(f"not a valid URL: {exc}") from None
    if parsed.scheme not in _PORTS:
        raise Refused(f"only http and https URLs are allowed, not {parsed.scheme or 'a relative URL'!r}")
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    if not host:
        raise Refused("the URL has no host")
    return parsed, host, parsed.port or _PORTS[parsed.scheme]


async def check(url: str, rules: Policy, resolve: Resolver = system_resolve) -> Target:
    """The checked target of url, or Refused naming why (Unreachable when its name does not resolve)."""
    parsed, host, port = _parse(url)
    numeric = _numeric(host, port)
    if numeric is not None:
        addresses = [numeric]
    elif host == "localhost" or host.endswith(".localhost"):
        addresses = list(_LOCALHOST)
    elif ":" in host or not _HOST_NAME.match(host):
        raise Refused(f"{host!r} is neither an IP address nor a valid host name")
    else:
        try:
            async with asyncio.timeout(rules.timeout_seconds):
                addresses = await resolve(host, port)
        except (OSError, UnicodeError, TimeoutError) as exc:
            log.info("outbound host does not resolve", extra={"host": host, "error": repr(exc)})
            raise Unreachable(f"{host} does not resolve") from None
        if not addresses:
            raise Unreachable(f"{host} does not resolve")
    if numeric is None and host in rules.names:
        return Target(parsed, host, port, tuple(addresses), literal=False)
    for text in addresses:
        ip = ipaddress.ip_address(text)
        problem = None if _allowed(ip, rules.networks) else address_problem(ip)
        if problem is not None:
            verb = "is" if numeric is not None else "resolves to"
            raise Refused(
                f"{host} {verb} a {problem} address; relaygate only calls public addresses "
                "(an operator may allow this host with OUTBOUND_ALLOW_HOSTS)"
            )
    return Target(parsed, numeric or host, port, tuple(addresses), literal=numeric is not None)


def header_problem(name: str, value: str) -> str | None:
    """Why a caller may not set this header, or None."""
    if not _TOKEN.match(name):
        return "not a valid header name"
    if name.lower() in DROPPED_HEADERS:
        return "set by relaygate or hop-by-hop; it cannot be chosen"
    if any(c in value for c in "\r\n\0") or len(value) > 8192:
        return "the value holds a line break or is over 8192 characters"
    return None


def _headers(target: Target, given: Mapping[str, str] | None) -> dict[str, str]:
    kept = {k: str(v) for k, v in (given or {}).items() if header_problem(str(k), str(v)) is None}
    shown = f"[{target.host}]" if ":" in target.host else target.host
    kept["Host"] = shown if target.port == _PORTS[target.url.scheme] else f"{shown}:{target.port}"
    kept["Accept-Encoding"] = "identity"
    return kept


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


async def request(
    method: str,
    url: str,
    rules: Policy,
    *,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    content: str | bytes | None = None,
    seconds: float | None = None,
    resolve: Resolver = system_resolve,
) -> Answer:
    """Check url, then send one request to a checked address and read the answer up to the caps.

    Raises Refused (the URL is not allowed) or Unreachable (anything between resolving and the last
    byte failed; the cause is logged, never shown).
    """
    seconds = min(seconds or rules.timeout_seconds, rules.timeout_seconds)
    target = await check(url, rules, resolve)
    try:
        async with asyncio.timeout(seconds):
            return await _exchange(method.upper(), target, rules, _headers(target, headers), json, content, seconds)
    except TimeoutError:
        log.info("outbound request timed out", extra={"host": target.host, "seconds": seconds})
        raise Unreachable(f"could not reach {target.host}") from None


async def _exchange(
    method: str,
    target: Target,
    rules: Policy,
    headers: dict[str, str],
    json: Any,
    content: str | bytes | None,
    seconds: float,
) -> Answer:
    extensions = {} if target.literal or target.url.scheme != "https" else {"sni_hostname": target.host}
    failure: Exception | None = None
    async with httpx.AsyncClient(verify=_tls(), trust_env=False, follow_redirects=False, timeout=seconds) as client:
        for address in target.addresses:
            try:
                async with client.stream(
                    method,
                    target.url.copy_with(host=address),
                    headers=headers,
                    json=json,
                    content=content,
                    extensions=extensions,
                ) as response:
                    body, truncated = await _read(response, rules.max_response_bytes)
                    return Answer(
                        response.status_code, response.headers, body, truncated, response.charset_encoding or "utf-8"
                    )
            except httpx.ConnectError as exc:
                failure = exc  # nothing was sent: the next address may answer
            except httpx.HTTPError as exc:
                failure = exc
                break
    log.info("outbound request failed", extra={"host": target.host, "error": repr(failure)})
    raise Unreachable(f"could not reach {target.host}")


async def _read(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """At most `cap` bytes of the body as sent (identity was asked for, so no decompression bomb); True
    when there was more."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        room = cap - size
        if len(chunk) > room:
            chunks.append(chunk[:room])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False
