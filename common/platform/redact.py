"""Scrubbing text that reaches clients (provider error messages) of URLs and credentials."""

from __future__ import annotations

import re

_URL = re.compile(r"\b(?:[a-z][a-z0-9+.-]*://|www\.)[^\s'\"<>]+", re.IGNORECASE)
# `key=...`, `api_key: ...`, `Authorization: Bearer ...` and the like: the value goes.
_ASSIGNED = re.compile(
    r"(?i)\b((?:api[_-]?key|access[_-]?token|secret|password|token|authorization|x-api-key)"
    r"[\"']?\s*[:=]\s*[\"']?)(?:bearer\s+)?[^\s'\",;]+"
)
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")
# Vendor key shapes (sk-..., rgk_..., AKIA..., xox?-...) and any long opaque run of key characters.
_KEYLIKE = re.compile(
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}|\brgk_[A-Za-z0-9_-]+|\bAKIA[0-9A-Z]{12,}|\bxox[a-z]-[A-Za-z0-9-]+"
    r"|\b(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{32,}"
)


def scrub(text: str) -> str:
    """`text` with URLs replaced by `[url]` and anything that looks like a credential by `[redacted]`."""
    text = _URL.sub("[url]", text)
    text = _ASSIGNED.sub(lambda m: m.group(1) + "[redacted]", text)
    text = _BEARER.sub("Bearer [redacted]", text)
    return _KEYLIKE.sub("[redacted]", text)
