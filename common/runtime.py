"""Process-level tuning shared by the gateway and the workers."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Move what start-up allocated out of the collector's way and collect young objects less often.

    The default thresholds make full collections walk every long-lived object (modules,
    litellm's tables) every few thousand allocations; those pauses showed up as 30-260 ms
    spikes in relay latency. Call once, after start-up.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
