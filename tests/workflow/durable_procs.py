"""A durable workflow and the node it runs on, for the tests where its starter dies.

    python -m tests.workflow.durable_procs URL JOURNAL ID   start FLOW as workflow ID

The node (:class:`Ledger`) runs in the test's own process and counts every execution of
each step; ``hold`` blocks until the test sets ``release``.
"""

from __future__ import annotations

import collections
import sys
import threading

import vertebra
from vertebra import Node, rpc
from vertebra.workflow import step

FLOW = step("ledger.add", 1) | step("ledger.double") | step("ledger.hold") | step("ledger.add", 10)
"""1 -> add 1 -> 2 -> double -> 4 -> hold (+100) -> 104 -> add 10 -> 114."""
RESULT = 114


class Ledger(Node):
    """Arithmetic that remembers how often each step ran."""

    name = "ledger"

    def __init__(self) -> None:
        self.runs: collections.Counter[tuple[object, ...]] = collections.Counter()
        self.holds_done = 0
        self.release = threading.Event()
        self.lock = threading.Lock()

    def _count(self, *what: object) -> None:
        with self.lock:
            self.runs[what] += 1

    @rpc
    def add(self, x: int, n: int) -> int:
        """x + n."""
        self._count("add", x, n)
        return x + n

    @rpc
    def double(self, x: int) -> int:
        """2x."""
        self._count("double", x)
        return 2 * x

    @rpc
    def hold(self, x: int) -> int:
        """x + 100, once the test releases it (a step to be killed in)."""
        self._count("hold", x)
        self.release.wait(120)
        with self.lock:
            self.holds_done += 1
        return x + 100


class DedupLedger(Ledger):
    """The same, dropping duplicates by idempotency key."""

    name = "ledger"
    dedup_window = 300.0


if __name__ == "__main__":
    url, journal, workflow_id = sys.argv[1:4]
    with vertebra.connect(url) as bus:
        print("result", FLOW.run(bus, 1, workflow_id=workflow_id, journal=journal), flush=True)
