"""The outbound guard sending real requests, to loopback servers only (allowed by the test's own
allow-list): pinned to the checked address, no redirects, size and time caps, one message for failures."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from cli.dev.embedded import free_port
from common.platform import outbound
from tests.fakes.http_target import Target
from tests.fakes.tls import make_ca_and_cert

LOOPBACK = outbound.Policy(networks=(ipaddress.ip_network("127.0.0.1/32"),))


@pytest.fixture
def no_name_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every name anything but the test's resolver tries to look up (refused, so no DNS query leaves)."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def numeric_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        flags = kwargs.get("flags", args[3] if len(args) > 3 else 0)
        text = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(text)
        except ValueError:
            if not flags & socket.AI_NUMERICHOST:
                asked.append(text)
                raise socket.gaierror(socket.EAI_NONAME, "no name lookups in this test") from None
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)
    return asked


def resolves_to(address: str) -> tuple[outbound.Resolver, list[str]]:
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return [address]

    return resolve, calls


async def test_the_default_policy_never_reaches_a_loopback_server(target: Target) -> None:
    for url in (
        target.url,
        f"http://127.1:{target.port}/",
        f"http://2130706433:{target.port}/",
        f"http://localhost:{target.port}/",
        f"http://[::ffff:127.0.0.1]:{target.port}/",
    ):
        with pytest.raises(outbound.Refused):
            await outbound.request("GET", url, outbound.Policy())
    assert target.hits == []


async def test_the_allow_list_lets_the_fake_through(target: Target) -> None:
    answer = await outbound.request("POST", f"{target.url}/echo", LOOPBACK, json={"a": 1})
    assert answer.status == 200 and answer.json()["body"] == '{"a":1}'
    assert len(target.hits) == 1


async def test_the_connection_goes_to_the_checked_address_with_the_name_kept(
    target: Target, no_name_lookups: list[str]
) -> None:
    resolve, calls = resolves_to("127.0.0.1")
    answer = await outbound.request("GET", f"http://svc.test:{target.port}/echo", LOOPBACK, resolve=resolve)
    assert answer.json()["headers"]["host"] == f"svc.test:{target.port}"
    assert calls == ["svc.test"] and no_name_lookups == []  # looked up once, by the guard, never again


async def test_tls_keeps_the_name_for_sni_and_certificate_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_name_lookups: list[str]
) -> None:
    ca_file, server_tls = make_ca_and_cert(tmp_path, dns_names=("svc.test",))
    monkeypatch.setattr(outbound, "_tls", lambda: ssl.create_default_context(cafile=str(ca_file)))
    target = Target().start(server_tls)
    try:
        resolve, _ = resolves_to("127.0.0.1")
        answer = await outbound.request("GET", f"https://svc.test:{target.port}/echo", LOOPBACK, resolve=resolve)
        assert answer.status == 200 and answer.json()["headers"]["host"] == f"svc.test:{target.port}"
        assert target.server_names == ["svc.test"] and no_name_lookups == []
        other, _ = resolves_to("127.0.0.1")  # a name the certificate does not hold fails like any other error
        with pytest.raises(outbound.Unreachable, match=r"^could not reach other\.test$"):
            await outbound.request("GET", f"https://other.test:{target.port}/echo", LOOPBACK, resolve=other)
    finally:
        target.stop()


async def test_a_name_resolving_outside_the_allow_list_is_refused_before_sending(target: Target) -> None:
    resolve, _ = resolves_to("127.0.0.2")
    with pytest.raises(outbound.Refused, match=r"elsewhere\.test resolves to a loopback address"):
        await outbound.request("GET", f"http://elsewhere.test:{target.port}/", LOOPBACK, resolve=resolve)
    assert target.hits == []


async def test_redirects_are_not_followed(target: Target) -> None:
    forbidden = Target().start()  # another loopback port, reached only if the redirect were followed
    try:
        answer = await outbound.request("GET", f"{target.url}/redirect?to={forbidden.url}/echo", LOOPBACK)
        assert answer.status == 302 and answer.headers["location"] == f"{forbidden.url}/echo"
        assert forbidden.hits == [] and [h.path.split("?")[0] for h in target.hits] == ["/redirect"]
    finally:
        forbidden.stop()


async def test_the_body_is_cut_at_the_size_cap(target: Target) -> None:
    rules = outbound.Policy(networks=LOOPBACK.networks, max_response_bytes=1000)
    answer = await outbound.request("GET", f"{target.url}/big/500000", rules)
    assert answer.truncated and answer.body == b"x" * 1000
    whole = await outbound.request("GET", f"{target.url}/big/1000", rules)
    assert not whole.truncated and len(whole.body) == 1000


async def test_closed_ports_and_silent_servers_fail_with_the_same_message(target: Target) -> None:
    rules = outbound.Policy(networks=LOOPBACK.networks, timeout_seconds=0.5)
    messages = []
    for url in (f"http://127.0.0.1:{free_port()}/", f"{target.url}/hang"):
        with pytest.raises(outbound.Unreachable) as caught:
            await outbound.request("GET", url, rules)
        messages.append(str(caught.value))
    assert messages == ["could not reach 127.0.0.1"] * 2


async def test_chosen_headers_cannot_replace_the_host_or_framing(target: Target) -> None:
    answer = await outbound.request(
        "POST",
        f"{target.url}/echo",
        LOOPBACK,
        content="hi",
        headers={
            "Host": "metadata.google.internal",
            "Transfer-Encoding": "chunked",
            "Connection": "upgrade",
            "Authorization": "Bearer mine",
            "X-Custom": "1",
        },
    )
    seen = json.loads(answer.body)["headers"]
    assert seen["host"] == f"127.0.0.1:{target.port}" and seen["content-length"] == "2"
    assert "transfer-encoding" not in seen and seen.get("connection") != "upgrade"
    assert (seen["authorization"], seen["x-custom"]) == ("Bearer mine", "1")
