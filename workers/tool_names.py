"""Tool names: `server.tool` in relaygate, names providers accept (`^[A-Za-z0-9_-]{1,64}$`) in the model call."""

from __future__ import annotations

import re
from collections.abc import Iterable

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def provider_name(qualified: str) -> str:
    """The provider-safe spelling of `server.tool`: the dot becomes `__`, anything else unsafe `_`."""
    return _UNSAFE.sub("_", qualified.replace(".", "__", 1))[:64] or "tool"


def provider_names(qualified: Iterable[str]) -> dict[str, str]:
    """A reversible mapping, provider name -> qualified name; a clash gets a numbered suffix."""
    mapping: dict[str, str] = {}
    for name in qualified:
        safe = base = provider_name(name)
        n = 2
        while safe in mapping:
            suffix = f"_{n}"
            safe, n = base[: 64 - len(suffix)] + suffix, n + 1
        mapping[safe] = name
    return mapping
