"""SQL for each table the gateway reads and writes: one module per table, no rules."""

from __future__ import annotations

import uuid


def parse_uuid(value: str) -> str | None:
    """The canonical form of a UUID path parameter, or None when it is not one (the row cannot exist)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None
