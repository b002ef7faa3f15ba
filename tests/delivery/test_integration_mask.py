"""Configs shown to clients: secrets and every webhook header value masked; sending a shown config back keeps them."""

from __future__ import annotations

from common.delivery.configs import MASK, mask, unmask_headers


def test_header_values_are_masked() -> None:
    config = {
        "url": "https://x.example",
        "secret": "whsec_abc",
        "headers": {"Authorization": "Bearer t0k3n", "X-Team": "blue"},
    }
    shown = mask(config)
    assert shown == {"url": "https://x.example", "secret": MASK, "headers": {"Authorization": MASK, "X-Team": MASK}}
    assert config["headers"]["Authorization"] == "Bearer t0k3n"  # the stored config is untouched


def test_a_masked_value_sent_back_keeps_the_stored_one() -> None:
    stored = {"Authorization": "Bearer t0k3n", "X-Team": "blue"}
    assert unmask_headers(stored, {"Authorization": MASK, "X-Team": "red", "X-New": "1"}) == {
        "Authorization": "Bearer t0k3n",
        "X-Team": "red",
        "X-New": "1",
    }
