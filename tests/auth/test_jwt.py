"""JWT verification: one explicit algorithm, required claims, and the classic forgeries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from common.platform.credentials import AuthError, decode_jwt, mint_token
from common.platform.settings import Settings

SECRET = "unit-secret-" + "y" * 32


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, object], claims: dict[str, object], key: bytes) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{b64(signature)}"


def claims(**extra: object) -> dict[str, object]:
    return {"sub": "alice", "tenant_id": "acme", "exp": int(time.time()) + 60, **extra}


def rsa_keypair() -> tuple[str, str, bytes]:
    """(private PEM, public PEM, public DER) of a fresh RSA key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = private.public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    public_der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private_pem, public_pem, public_der


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str, bytes]:
    return rsa_keypair()


def test_minted_token_round_trips() -> None:
    settings = Settings(jwt_secret_key=SECRET)
    principal = decode_jwt(mint_token(settings, user_id="alice", tenant_id="acme"), settings)
    assert (principal.user_id, principal.tenant_id, principal.kind) == ("alice", "acme", "user")


def test_hs256_signed_with_the_rsa_public_key_is_rejected(rsa_keys: tuple[str, str, bytes]) -> None:
    private_pem, public_pem, public_der = rsa_keys
    settings = Settings(jwt_algorithm="RS256", jwt_public_key=public_pem)
    genuine = jwt.encode(claims(), private_pem, algorithm="RS256")
    assert decode_jwt(genuine, settings).user_id == "alice"
    forged = forge({"alg": "HS256", "typ": "JWT"}, claims(), public_der)
    # The attack is real: python-jose verifies this token when it is not given an algorithm list.
    assert jwt.decode(forged, public_der, algorithms=None, options={"verify_aud": False})["sub"] == "alice"
    with pytest.raises(AuthError):
        decode_jwt(forged, settings)


@pytest.mark.parametrize(
    "token_factory",
    [
        pytest.param(lambda: forge({"alg": "none", "typ": "JWT"}, claims(), b""), id="alg-none"),
        pytest.param(lambda: jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256"), id="expired"),
        pytest.param(lambda: jwt.encode({"sub": "alice", "tenant_id": "acme"}, SECRET, algorithm="HS256"), id="no-exp"),
        pytest.param(lambda: jwt.encode(claims(), "another-secret", algorithm="HS256"), id="wrong-secret"),
        pytest.param(
            lambda: jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),
            id="no-tenant",
        ),
        pytest.param(lambda: jwt.encode(claims(), SECRET, algorithm="HS512"), id="other-hmac-alg"),
        pytest.param(lambda: "not.a.token", id="garbage"),
    ],
)
def test_bad_tokens_are_rejected(token_factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AuthError):
        decode_jwt(token_factory(), Settings(jwt_secret_key=SECRET))


def test_audience_and_issuer_are_checked_when_configured() -> None:
    settings = Settings(jwt_secret_key=SECRET, jwt_audience="relaygate", jwt_issuer="https://idp.example")
    good = jwt.encode(claims(aud="relaygate", iss="https://idp.example"), SECRET, algorithm="HS256")
    assert decode_jwt(good, settings).user_id == "alice"
    for bad in (claims(aud="other", iss="https://idp.example"), claims(aud="relaygate", iss="https://evil"), claims()):
        with pytest.raises(AuthError):
            decode_jwt(jwt.encode(bad, SECRET, algorithm="HS256"), settings)


def test_expired_token_says_so() -> None:
    with pytest.raises(AuthError, match="expired"):
        decode_jwt(
            jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256"), Settings(jwt_secret_key=SECRET)
        )


def test_configured_audience_and_issuer_are_required() -> None:
    settings = Settings(jwt_secret_key=SECRET, jwt_audience="relaygate", jwt_issuer="https://idp.example")
    full = claims(aud="relaygate", iss="https://idp.example")
    assert decode_jwt(jwt.encode(full, SECRET, algorithm="HS256"), settings).user_id == "alice"
    no_audience = {k: v for k, v in full.items() if k != "aud"}
    with pytest.raises(AuthError):
        decode_jwt(jwt.encode(no_audience, SECRET, algorithm="HS256"), settings)
    no_issuer = {k: v for k, v in full.items() if k != "iss"}
    with pytest.raises(AuthError):
        decode_jwt(jwt.encode(no_issuer, SECRET, algorithm="HS256"), settings)


def test_scopes_claim_as_a_string_is_split_not_spelled_out() -> None:
    settings = Settings(jwt_secret_key=SECRET)
    token = jwt.encode(claims(scopes="metrics requests"), SECRET, algorithm="HS256")
    assert decode_jwt(token, settings).scopes == frozenset({"metrics", "requests"})
