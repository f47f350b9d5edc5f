"""What ``vertebra monitor`` and ``vertebra nodes`` show: every live service, its methods,
and each method's rate, errors, work in flight and latency, read with the built-in stats call.

The figures of a service come from the replica that answered the stats call (calls are
load-balanced; with several replicas, successive refreshes may show different ones —
the replica column says which).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .dispatch.sync import Bus
from .nodes.runtime import STATS_METHOD
from .wire.errors import VertebraError
from .wire.info import ServiceInfo

__all__ = ["Row", "Snapshot", "take_snapshot"]


@dataclass(frozen=True, slots=True)
class Row:
    """One method of one service."""

    service: str
    replicas: int
    replica: str
    method: str
    kind: str
    calls: int
    rate: float
    errors: int
    in_flight: int
    p50_ms: float
    p99_ms: float
    outbox: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one refresh saw, and when."""

    taken: float
    rows: tuple[Row, ...]
    unreachable: tuple[str, ...]

    def to_json(self) -> list[dict[str, Any]]:
        """Plain data, one map per method (``vertebra nodes --json``)."""
        return [{f: getattr(r, f) for f in Row.__slots__} for r in self.rows]


def take_snapshot(bus: Bus, previous: Snapshot | None = None, timeout: float = 2.0) -> Snapshot:
    """Discover the services and ask each for its statistics; rates against ``previous``."""
    now = time.monotonic()
    before = {(r.service, r.replica, r.method): r.calls for r in previous.rows} if previous else {}
    elapsed = now - previous.taken if previous else 0.0
    rows: list[Row] = []
    unreachable: list[str] = []
    services: list[ServiceInfo] = bus.nodes()
    futures = {s.name: bus.proxy(s.name, timeout=timeout)[STATS_METHOD].future() for s in services}
    for s in services:
        try:
            stats = futures[s.name].result()
        except VertebraError:
            unreachable.append(s.name)
            continue
        kinds = {m.name: m.kind for m in s.methods}
        outbox = int(stats.get("bus", {}).get("outbox", {}).get("queued", 0))
        for name, m in stats.get("methods", {}).items():
            key = (s.name, stats.get("replica", ""), name)
            rate = (m["calls"] - before[key]) / elapsed if key in before and elapsed > 0 else 0.0
            rows.append(Row(s.name, s.replicas, str(stats.get("replica", "")), name,
                            kinds.get(name, "?"), int(m["calls"]), max(rate, 0.0), int(m["errors"]),
                            int(m["in_flight"]), float(m["p50_ms"]), float(m["p99_ms"]), outbox))
    return Snapshot(now, tuple(rows), tuple(unreachable))


COLUMNS = ("service", "replicas", "method", "kind", "calls", "calls/s", "errors", "in flight",
           "p50 ms", "p99 ms", "outbox")


def cells(r: Row) -> tuple[str, ...]:
    """The text of one row, in COLUMNS order."""
    return (r.service, str(r.replicas), r.method, r.kind, str(r.calls), f"{r.rate:.1f}",
            str(r.errors), str(r.in_flight), f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.outbox))


def plain_table(snap: Snapshot) -> str:
    """The snapshot as aligned plain text."""
    if not snap.rows and not snap.unreachable:
        return "no services"
    table = [COLUMNS, *(cells(r) for r in snap.rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines += [f"{name}: no answer to the stats call" for name in snap.unreachable]
    return "\n".join(lines)
