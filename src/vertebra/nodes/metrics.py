"""Prometheus metrics for the nodes a bus serves (optional: ``pip install 'vertebra[prometheus]'``).

``start_metrics_server(bus, port)`` serves ``/metrics`` over HTTP; each scrape reads the
same figures as the built-in stats call, so nothing is counted twice.  Names follow the
Prometheus conventions (``_total`` counters, base units: seconds)::

    vertebra_handler_calls_total{service,method}        runs of each entry point
    vertebra_handler_errors_total{service,method}       runs that raised
    vertebra_handler_in_flight{service,method}          running now
    vertebra_handler_latency_seconds{service,method}     histogram (_bucket{le}, _sum, _count)
    vertebra_outbox_messages{state="queued"}            waiting to be sent (held ones too)
    vertebra_outbox_messages{state="held"}              delayed, not yet due
    vertebra_outbox_events_total{outcome=...}           accepted, sent, dropped, expired, retries, failed
    vertebra_transport_events_total{transport,event}    reconnects, malformed input, ...
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import start_http_server
from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from .runtime import NodeRuntime
from .stats import LATENCY_BUCKETS

if TYPE_CHECKING:
    from ..dispatch.bus import AsyncBus

__all__ = ["BusCollector", "start_metrics_server"]


class BusCollector(Collector):
    """Reads a bus's statistics at scrape time."""

    def __init__(self, bus: AsyncBus) -> None:
        self.bus = bus

    def collect(self) -> Iterator[Metric]:
        """The metric families of this bus and the nodes it serves."""
        labels = ["service", "method"]
        calls = CounterMetricFamily("vertebra_handler_calls", "Handler runs.", labels=labels)
        errors = CounterMetricFamily("vertebra_handler_errors", "Handler runs that raised.", labels=labels)
        in_flight = GaugeMetricFamily("vertebra_handler_in_flight", "Handlers running now.", labels=labels)
        latency = HistogramMetricFamily("vertebra_handler_latency_seconds",
                                        "Handler run time (a histogram: add it up across replicas).",
                                        labels=labels)
        for rt in self.bus.runtimes:
            if not isinstance(rt, NodeRuntime):
                continue
            service = rt.info.name
            for method, m in sorted(rt.methods.items()):
                key = [service, method]
                calls.add_metric(key, m.calls)
                errors.add_metric(key, m.errors)
                in_flight.add_metric(key, m.in_flight)
                cumulative = list(itertools.accumulate(m.buckets))
                bounds = [*map(repr, LATENCY_BUCKETS), "+Inf"]
                latency.add_metric(key, list(zip(bounds, cumulative, strict=True)), sum_value=m.latency_sum)
        yield from (calls, errors, in_flight, latency)
        bus_stats = self.bus.stats()
        outbox = bus_stats["outbox"]
        depth = GaugeMetricFamily("vertebra_outbox_messages", "Messages in the outbox.", labels=["state"])
        depth.add_metric(["queued"], outbox["queued"])
        depth.add_metric(["held"], outbox.get("held", 0))
        yield depth
        events = CounterMetricFamily("vertebra_outbox_events", "What happened to outbox messages.",
                                     labels=["outcome"])
        for outcome, n in outbox.items():
            if outcome not in ("queued", "held"):
                events.add_metric([outcome], n)
        yield events
        transport = CounterMetricFamily("vertebra_transport_events", "Transport events.",
                                        labels=["transport", "event"])
        for event, n in bus_stats["transport"].items():
            if isinstance(n, (int, float)):
                transport.add_metric([self.bus.transport.scheme, event], n)
        yield transport


def start_metrics_server(bus: AsyncBus, port: int = 9464, addr: str = "127.0.0.1",
                         registry: CollectorRegistry = REGISTRY) -> None:
    """Serve ``/metrics`` for ``bus`` on ``addr:port`` (a daemon thread)."""
    registry.register(BusCollector(bus))
    start_http_server(port, addr=addr, registry=registry)
