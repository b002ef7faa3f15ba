"""What a request used: tokens and cost, as stored, shown and streamed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Usage:
    """Tokens in and out and their cost in USD; `estimated` when the provider reported no usage and
    relaygate counted the tokens itself."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    estimated: bool = False

    def as_data(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 10),
            "estimated": self.estimated,
        }


def of_row(row: Any) -> Usage:
    """The request totals of a request_logs row (or mapping; missing usage columns count as none)."""
    return Usage(
        int(row.get("input_tokens") or 0),
        int(row.get("output_tokens") or 0),
        float(row.get("cost_usd") or 0),
        bool(row.get("usage_estimated")),
    )
