"""Programs the fault tests run as real processes (so they can be SIGKILLed).

    python -m tests.faults.procs worker URL OUT [DELAY]   serve "faulty"; append each task's
                                                          item to OUT after DELAY seconds
    python -m tests.faults.procs sender URL SPOOL N       cast N tasks through a spooled bus,
                                                          print "accepted", then wait
    python -m tests.faults.procs flush URL SPOOL          open the spool again, flush, exit
"""

from __future__ import annotations

import os
import sys
import time

import vertebra
from vertebra import Node, task


class Faulty(Node):
    """Appends each task's item to a file, one line per run."""

    name = "faulty"
    concurrency = 4

    def __init__(self, out: str, delay: float) -> None:
        self.out = out
        self.delay = delay

    @task
    def work(self, item: int) -> None:
        """Record one item (after a pause, so that a kill can land mid-task)."""
        time.sleep(self.delay)
        with open(self.out, "a") as f:
            f.write(f"{item}\n")
            f.flush()
            os.fsync(f.fileno())


def main(argv: list[str]) -> None:
    cmd, url = argv[0], argv[1]
    if cmd == "worker":
        delay = float(argv[3]) if len(argv) > 3 else 0.0
        vertebra.serve(Faulty(argv[2], delay), url=url,
                       ready=lambda: print("ready", flush=True))
    elif cmd == "sender":
        bus = vertebra.connect(url, spool=argv[2], outbox_size=int(argv[3]) + 10)
        for i in range(int(argv[3])):
            bus.proxy("faulty").work.cast(i)
        print("accepted", flush=True)
        time.sleep(600)
    elif cmd == "flush":
        with vertebra.connect(url, spool=argv[2], linger=120) as bus:
            print("restored", bus.stats()["outbox"].get("restored", 0), flush=True)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
