"""Anomalies the chaos suite finds, by kind with a few examples each, and how they are printed."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

EXAMPLES_PER_KIND = 5


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Anomalies:
    """Every anomaly counted by kind; the first few of each kind kept as examples."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.requests: set[str] = set()

    def add(self, kind: str, **example: Any) -> None:
        """Count one anomaly; a `request_id` in the example also counts that request as one that ended wrongly."""
        self.counts[kind] += 1
        if example.get("request_id"):
            self.requests.add(str(example["request_id"]))
        kept = self.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES_PER_KIND:
            kept.append(example)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def as_dict(self) -> dict[str, Any]:
        return {kind: {"count": n, "examples": self.examples.get(kind, [])} for kind, n in self.counts.most_common()}

    def print(self) -> None:
        if not self.counts:
            print("anomalies: none")
            return
        print(f"anomalies: {sum(self.counts.values())} in {len(self.counts)} kinds")
        for kind, n in self.counts.most_common():
            print(f"  {kind}: {n}")
            for example in self.examples.get(kind, [])[:3]:
                text = ", ".join(f"{k}={_short(v)}" for k, v in example.items())
                print(f"      e.g. {text}")


def _short(value: Any, limit: int = 160) -> str:
    text = str(value).replace("\n", " | ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def spread(values: list[float]) -> dict[str, float | int | None]:
    """n, p50, p90 and max of a list of seconds (None when empty)."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        k = (len(ordered) - 1) * q
        lo = int(k)
        hi = min(lo + 1, len(ordered) - 1)
        return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), 2)

    return {"n": len(ordered), "p50": at(0.5), "p90": at(0.9), "max": round(ordered[-1], 2)}


def fmt_spread(s: dict[str, Any]) -> str:
    if not s["n"]:
        return "n=0"
    return f"p50 {s['p50']:.2f} s, p90 {s['p90']:.2f} s, max {s['max']:.2f} s (n={s['n']})"
