"""Redis Lua scripts live in `.lua` files beside the module that runs them; `load` reads one (at import)."""

from __future__ import annotations

import re
from pathlib import Path


def load(module_file: str, name: str, **constants: int) -> str:
    """The script `name` in the folder of `module_file` (the caller's `__file__`), with each of `constants`
    written where the script names it (a word in capitals, e.g. `WINDOW_MS`)."""
    text = Path(module_file).with_name(name).read_text()
    for key, value in constants.items():
        text, found = re.subn(rf"\b{key}\b", str(value), text)
        if not found:
            raise ValueError(f"{name} does not use {key}")
    return text
