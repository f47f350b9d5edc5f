"""The receiving side of the program-shape tests: a node, served in the test process, that
counts every task item and every event it is handed."""

from __future__ import annotations

import collections
import threading
from typing import Any

from vertebra import Node, event, rpc, task


class Collector(Node):
    """Counts each ``report`` item and each ``shapes.*`` event payload (duplicates show as
    a count above one: the node does not suppress them)."""

    name = "collector"
    dedup_window = 0.0

    def __init__(self) -> None:
        self.reports: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    @task
    def report(self, item: str) -> None:
        """Count one item."""
        with self.lock:
            self.reports[item] += 1

    @event("shapes.*")
    def on_event(self, topic: str, payload: Any) -> None:
        """Count one event."""
        with self.lock:
            self.events[str(payload)] += 1

    @rpc
    def count(self) -> int:
        """How many reports arrived (a call, for the fork test)."""
        with self.lock:
            return sum(self.reports.values())

    def snapshot(self) -> tuple[collections.Counter[str], collections.Counter[str]]:
        """Copies of (reports, events)."""
        with self.lock:
            return collections.Counter(self.reports), collections.Counter(self.events)


class DedupCollector(Collector):
    """The same collector with ``dedup_window = 60``, as a real one that wants
    effectively-once handling would set: a message id seen before is dropped."""

    name = "collector"
    dedup_window = 60.0
