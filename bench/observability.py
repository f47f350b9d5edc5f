"""What tracing adds to a call: in-process async round trips with the tracing hooks off
(as without opentelemetry installed) and on (OpenTelemetry SDK recording every span,
exporting nowhere), interleaved in one run.

    python -m bench.observability [--seconds 1.0] [--repeat 5]

Per-method statistics (for the stats call, the monitor and /metrics) are always on; their
cost is inside both figures, and measured alone (the bookkeeping one call does) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import timeit

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import vertebra.dispatch.tracing as tracing
from bench.inproc import vertebra_async
from vertebra.nodes.stats import MethodStats


class Discard(SpanExporter):
    """Takes every span and throws it away: the cost of making spans, not of shipping them."""

    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    trace.set_tracer_provider(provider)
    otel = tracing.trace
    runs: dict[str, list[float]] = {"tracing off": [], "tracing on (SDK, spans discarded)": []}
    for _ in range(args.repeat):
        for name in runs:
            tracing.trace = None if name == "tracing off" else otel  # type: ignore[assignment]
            runs[name].append(asyncio.run(vertebra_async("aecho", "json", args.seconds)))
    off = statistics.median(runs["tracing off"])
    print(f"{'case':<36} {'calls/s (median)':>17} {'µs per call':>12} {'ratio':>7}")
    for name, values in runs.items():
        med = statistics.median(values)
        print(f"{name:<36} {med:>17,.0f} {1e6 / med:>12.1f} {med / off:>7.3f}")
    print(f"statistics bookkeeping alone: {stats_cost_us():.2f} µs per call (timeit, median of 5)")


def stats_cost_us() -> float:
    """What the runtime does per call for its statistics, timed alone."""
    m = MethodStats()

    def one_call() -> None:
        m.calls += 1
        m.in_flight += 1
        started = time.perf_counter()
        m.in_flight -= 1
        m.latencies.append(time.perf_counter() - started)

    n = 200_000
    return statistics.median(timeit.repeat(one_call, number=n, repeat=5)) / n * 1e6


if __name__ == "__main__":
    main()
