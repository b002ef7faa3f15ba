"""Model prices from litellm's bundled cost map, read as JSON without importing litellm.

A worker prices offline and OpenAI-compatible replies before litellm (seconds to import) has loaded:
it is the same file litellm loads as `litellm.model_cost` (workers/__init__.py keeps it local).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import orjson

FILE = "model_prices_and_context_window_backup.json"


@functools.cache
def _prices() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / FILE
        if path.exists():
            loaded = orjson.loads(path.read_bytes())
            return loaded if isinstance(loaded, dict) else {}
    return {}


def load() -> None:
    """Read the map now (about 0.2 s of CPU: call it off the event loop)."""
    _prices()


def loaded() -> bool:
    return _prices.cache_info().currsize > 0


def cost(model: str, input_tokens: int, output_tokens: int) -> float | None:
    """USD for these tokens at the map's per-token prices (the name as given, then without its
    provider prefix, as litellm looks it up), or None if the map has no price for the model."""
    prices = _prices()
    for name in (model, model.partition("/")[2]):
        entry = prices.get(name) if name else None
        if isinstance(entry, dict) and "input_cost_per_token" in entry:
            return input_tokens * float(entry.get("input_cost_per_token") or 0) + output_tokens * float(
                entry.get("output_cost_per_token") or 0
            )
    return None
