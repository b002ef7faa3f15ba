"""Ids in paths: a UUID parameter in its canonical form, or None when it cannot name a row."""

from __future__ import annotations

import uuid


def parse_uuid(value: str) -> str | None:
    """The canonical form of a UUID path parameter, or None when it is not one (the row cannot exist)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None
