"""Provider error text reaching clients carries no URLs and no keys."""

from __future__ import annotations

from common.platform.redact import scrub
from workers.model import describe_error


def test_urls_and_keys_are_scrubbed() -> None:
    raw = (
        "OpenAIException - Incorrect API key provided: sk-proj-abcdEFGH1234ijkl5678. You can find your API key "
        "at https://platform.openai.com/account/api-keys?org=acme. api_key=hunter2secret "
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig "
        "upstream http://10.0.0.7:8080/v1/chat/completions refused; key rgk_0123456789abcdef01234567_"
        "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde"
    )
    cleaned = scrub(raw)
    for secret in (
        "sk-proj",
        "platform.openai.com",
        "hunter2secret",
        "eyJhbGci",
        "10.0.0.7",
        "rgk_",
        "AbCdEfGhIjKlMnOp",
    ):
        assert secret not in cleaned, (secret, cleaned)
    assert "Incorrect API key provided" in cleaned and "[url]" in cleaned and "[redacted]" in cleaned


def test_describe_error_scrubs_what_the_provider_said() -> None:
    error = RuntimeError("connection to https://user:pw@llm.internal.example/v1 failed, api_key=sk-live-1234567890abcd")
    described = describe_error(error)
    assert described.startswith("model provider error (RuntimeError): connection to [url] failed")
    assert "sk-live" not in described and "llm.internal" not in described


def test_plain_text_is_left_alone() -> None:
    assert scrub("The model is overloaded; retry in 30 seconds (request 42).") == (
        "The model is overloaded; retry in 30 seconds (request 42)."
    )
