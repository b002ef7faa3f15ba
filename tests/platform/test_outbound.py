"""The outbound guard's address rules, without any network: literal forms are classified by the C
library's numeric parser and `ipaddress`, names by a resolver the test supplies."""

from __future__ import annotations

import asyncio
import socket

import pytest

from common.platform import outbound
from common.platform.settings import Settings

DENY = outbound.Policy()
PUBLIC = "93.184.215.14"


async def no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} must be classified without a lookup")


def resolver(answers: dict[str, list[str]]) -> outbound.Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    return resolve


async def refusal(url: str, rules: outbound.Policy = DENY, resolve: outbound.Resolver = no_lookup) -> str:
    with pytest.raises(outbound.Refused) as caught:
        await outbound.check(url, rules, resolve)
    return str(caught.value)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://0x7f.0.0.1:8080/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://[64:ff9b::7f00:1]/", "loopback"),
        ("http://[2002:7f00:1::]/", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[fd00::1]/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://100.64.0.1/", "shared (CGNAT)"),
        ("http://[64:ff9b::6440:1]/", "shared (CGNAT)"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://255.255.255.255/", "reserved"),
        ("http://198.18.0.1/", "private"),
        ("http://[2001:db8::1]/", "private"),
    ],
)
async def test_non_public_literals_are_refused_in_every_encoding(url: str, reason: str) -> None:
    message = await refusal(url)
    assert f" is a {reason} address" in message, message
    assert message.startswith("URL refused: ") and "OUTBOUND_ALLOW_HOSTS" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/",
        "http://localhost./",
        "http://LOCALHOST:8000/x",
        "https://api.localhost/",
        "http://localhost../",
    ],
)
async def test_localhost_names_are_loopback_without_asking_dns(url: str) -> None:
    assert "resolves to a loopback address" in await refusal(url)


async def test_a_name_is_refused_when_any_of_its_addresses_is_not_public() -> None:
    names = resolver(
        {
            "internal.test": ["127.0.0.1"],
            "split.test": [PUBLIC, "10.1.2.3"],
            "meta.test": ["fd00:ec2::254"],
            "mapped.test": ["::ffff:192.168.0.1"],
        }
    )
    for host, reason in (
        ("internal.test", "loopback"),
        ("split.test", "private"),
        ("meta.test", "private"),
        ("mapped.test", "private"),
    ):
        assert f"{host} resolves to a {reason} address" in await refusal(f"https://{host}/x", resolve=names)


async def test_public_addresses_pass_and_keep_the_resolved_order() -> None:
    names = resolver({"api.example.test": [PUBLIC, "2606:4700::1111"]})
    target = await outbound.check("https://API.example.test.:8443/hook?a=1", DENY, names)
    assert (target.host, target.port, target.addresses, target.literal) == (
        "api.example.test",
        8443,
        (PUBLIC, "2606:4700::1111"),
        False,
    )
    nat64 = await outbound.check("http://[64:ff9b::808:808]/", DENY, no_lookup)
    assert nat64.addresses == ("64:ff9b::808:808",) and nat64.literal
    assert (await outbound.check(f"http://{PUBLIC}/", DENY, no_lookup)).host == PUBLIC


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.test/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://example.test/", "only http and https"),
        ("/relative", "only http and https"),
        ("http:///x", "no host"),
        ("http://exa mple.test/", "nor a valid host name"),
        ("http://0177.0.0.1/", "not a valid URL"),
        ("http://[fe80::1%25eth0]/", "neither an IP address nor a valid host name"),
    ],
)
async def test_only_http_urls_with_a_host(url: str, reason: str) -> None:
    assert reason in await refusal(url)


async def test_a_name_that_does_not_resolve_is_unreachable() -> None:
    async def nxdomain(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(outbound.Unreachable, match=r"nowhere\.test does not resolve"):
        await outbound.check("http://nowhere.test/", DENY, nxdomain)

    async def silent(host: str, port: int) -> list[str]:
        await asyncio.Event().wait()
        return []

    with pytest.raises(outbound.Unreachable, match=r"slow\.test does not resolve"):
        await outbound.check("http://slow.test/", outbound.Policy(timeout_seconds=0.05), silent)


async def test_the_allow_list_admits_its_networks_and_names_only() -> None:
    rules = Settings(outbound_allow_hosts="127.0.0.0/8, Internal.Corp., 10.9.0.0/16").outbound_policy()
    for url in ("http://127.0.0.1:9/", "http://127.1/", "http://[::ffff:127.0.0.1]/"):
        assert (await outbound.check(url, rules, no_lookup)).addresses
    assert "is a loopback address" in await refusal("http://[::1]/", rules)
    assert "is a private address" in await refusal("http://10.8.0.1/", rules)
    assert (await outbound.check("http://10.9.3.3/", rules, no_lookup)).literal
    corp = resolver({"internal.corp": ["10.1.1.1", "192.168.7.7"], "other.corp": ["10.1.1.1"]})
    assert (await outbound.check("http://internal.corp/", rules, corp)).addresses == ("10.1.1.1", "192.168.7.7")
    assert "other.corp resolves to a private address" in await refusal("http://other.corp/", rules, corp)
    # localhost names stay loopback (127.0.0.1 and ::1): a network covering only one is not enough.
    assert "resolves to a loopback address" in await refusal("http://localhost/", rules)


def test_the_allow_list_names_a_bad_entry() -> None:
    with pytest.raises(ValueError, match="'not a host' is neither a host name nor a CIDR"):
        outbound.parse_allow("10.0.0.0/8, not a host")
    with pytest.raises(ValueError, match="OUTBOUND_ALLOW_HOSTS"):
        Settings(outbound_allow_hosts="300.1.1.1/8")
    assert Settings().outbound_policy() == outbound.Policy()


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("Authorization", "Bearer abc", True),
        ("X-Custom", "1", True),
        ("Host", "metadata.google.internal", False),
        ("host", "x", False),
        ("Transfer-Encoding", "chunked", False),
        ("Connection", "close", False),
        ("Proxy-Authorization", "Basic x", False),
        ("Content-Length", "5", False),
        ("X-Split", "a\r\nInjected: 1", False),
        ("Bad Name", "x", False),
    ],
)
def test_header_rules(name: str, value: str, allowed: bool) -> None:
    assert (outbound.header_problem(name, value) is None) is allowed
