"""Per-method statistics of a served node: calls, errors, in flight, latency percentiles."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MethodStats", "percentile"]

WINDOW = 1024   # latencies kept per method for the percentiles (the most recent ones)


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@dataclass(slots=True)
class MethodStats:
    """Counters and recent latencies of one entry point."""

    calls: int = 0
    errors: int = 0
    in_flight: int = 0
    latencies: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=WINDOW))

    def snapshot(self) -> dict[str, Any]:
        """Plain figures: counts, and p50/p99 latency in milliseconds over the recent window."""
        lat = sorted(self.latencies)
        return {"calls": self.calls, "errors": self.errors, "in_flight": self.in_flight,
                "p50_ms": round(percentile(lat, 0.50) * 1000, 3),
                "p99_ms": round(percentile(lat, 0.99) * 1000, 3)}
