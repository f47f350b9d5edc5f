"""How long ``cast()`` blocks its caller while the receiver is healthy, slow and down,
beside a plain ``queue.Queue.put`` measured in the same run.

    python -m bench.outbox [--url URL] [--n 20000]

Without --url it runs on an embedded ZeroMQ hub (the default transport). "down" means no
replica of the service is running, so every cast stays queued; on the embedded hub a last
case stops the hub too. "slow" means one replica taking 10 ms per message. Goal (issue 6):
p99 under 50 µs in all cases.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import time
from collections.abc import Callable

import vertebra
from vertebra import Node, task


class Sink(Node):
    """Receives the casts."""

    name = "bench-sink"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    @task
    def put(self, i: int) -> None:
        """Take one item."""
        if self.delay:
            time.sleep(self.delay)


def timings(put: Callable[[int], object], n: int) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        put(i)
        out.append((clock() - t0) / 1000.0)
    return out


def row(name: str, us: list[float]) -> str:
    us = sorted(us)
    p99 = us[min(len(us) - 1, int(0.99 * len(us)))]
    return f"{name:<34} {statistics.median(us):>9.2f} {p99:>9.2f} {us[-1]:>10.1f}"


def run_case(url: str, delay: float | None, n: int) -> list[float]:
    with vertebra.connect(url, outbox_size=n + 10, linger=0.5) as node_bus, \
            vertebra.connect(url, outbox_size=n + 10, linger=0.5) as bus:
        if delay is not None:
            node_bus.serve(Sink(delay))
        result = timings(bus.proxy("bench-sink").put.cast, n)
        dropped = bus.stats()["outbox"]["dropped"]
        if dropped:
            raise SystemExit(f"the outbox dropped {dropped}: the measurement is void")
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None)
    ap.add_argument("--n", type=int, default=20_000)
    args = ap.parse_args()
    q: queue.Queue[int] = queue.Queue()
    lines = [row("queue.Queue.put (reference)", timings(q.put, args.n))]
    hub = None
    url = args.url
    if url is None:
        hub = vertebra.Hub("tcp://127.0.0.1:0").start()
        url = hub.url
    for name, delay in (("cast(), receiver healthy", 0.0), ("cast(), receiver slow (10 ms)", 0.01),
                        ("cast(), receiver down", None)):
        lines.append(row(name, run_case(url, delay, args.n)))
    print(f"transport: {url}   n = {args.n}")
    print(f"{'case':<34} {'p50 µs':>9} {'p99 µs':>9} {'max µs':>10}")
    print("\n".join(lines))
    if hub is not None:
        hub.stop()


if __name__ == "__main__":
    main()
