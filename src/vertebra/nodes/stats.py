"""Per-method statistics of a served node: calls, errors, in flight, latency percentiles
over a recent window (for people: ``vertebra monitor``) and a cumulative latency histogram
(for Prometheus, whose histograms add up across replicas where quantiles cannot)."""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LATENCY_BUCKETS", "MethodStats", "percentile"]

WINDOW = 1024   # latencies kept per method for the percentiles (the most recent ones)

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds in seconds of the histogram's buckets (+Inf is implied): Prometheus's
defaults, extended down to 100 µs since an RPC handler is often that fast."""


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
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    """Runs per bucket (not cumulative); the last one is past the largest bound."""
    latency_sum: float = 0.0

    def record(self, seconds: float) -> None:
        """Count one run that took ``seconds``."""
        self.latencies.append(seconds)
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def snapshot(self) -> dict[str, Any]:
        """Plain figures: counts, and p50/p99 latency in milliseconds over the recent window."""
        lat = sorted(self.latencies)
        return {"calls": self.calls, "errors": self.errors, "in_flight": self.in_flight,
                "p50_ms": round(percentile(lat, 0.50) * 1000, 3),
                "p99_ms": round(percentile(lat, 0.99) * 1000, 3)}
