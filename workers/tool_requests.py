"""A tool call a model asked for, as every model path hands it to the agent loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ToolRequest:
    """A tool call the model asked for, assembled from its streamed deltas (`name` is the provider's name)."""

    id: str = ""
    name: str = ""
    arguments: str = ""
