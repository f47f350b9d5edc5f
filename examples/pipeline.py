"""Task ventilator, a pool of worker processes and a sink: fan-out / fan-in.

    python examples/pipeline.py                     # on an embedded ZeroMQ hub
    python examples/pipeline.py --url URL           # on a hub or RabbitMQ you run
    python examples/pipeline.py --jobs 200 --workers 4

The ventilator waits (discovery) until the whole pool is up, then hands out jobs with
`cast` to the "workers" service; each worker process serves one replica with
`concurrency = 1`, so it holds one job at a time.  Each worker hands its
result to the "sink" service, which counts per worker.  Half-way through, one worker is
killed (SIGKILL) while it runs: its unacknowledged job is redelivered and the others take
its share.  Delivery is at-least-once, so the sink counts each job once.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import vertebra
from vertebra import Node, task


class Worker(Node):
    name = "workers"
    concurrency = 1                    # one job at a time: ask for the next when done

    def __init__(self, out: vertebra.Bus) -> None:
        self.me = f"worker-{os.getpid()}"
        self.out = out                                        # where results go

    @task
    def crunch(self, job: int, cost: float) -> None:
        time.sleep(cost)                                      # the "work"
        self.out.proxy("sink").collect.cast(self.me, job)


class Sink(Node):
    name = "sink"

    def __init__(self) -> None:
        self.done: dict[int, str] = {}                       # job -> worker that did it
        self.duplicates = 0
        self.lock = threading.Lock()

    @task
    def collect(self, worker: str, job: int) -> None:
        with self.lock:
            if job in self.done:
                self.duplicates += 1
            self.done[job] = worker


def wait_for_replicas(bus: vertebra.Bus, service: str, n: int, timeout: float = 30.0) -> None:
    """Discovery: wait until ``n`` replicas of ``service`` are up, so that all share the work."""
    deadline = time.monotonic() + timeout
    while next((s.replicas for s in bus.nodes() if s.name == service), 0) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"fewer than {n} replicas of {service} after {timeout}s")
        time.sleep(0.1)


def run(url: str, jobs: int, workers: int) -> None:
    cmd = [sys.executable, __file__, "worker", "--url", url]
    pool = [subprocess.Popen(cmd) for _ in range(workers)]
    sink = Sink()
    with vertebra.connect(url) as bus:
        bus.serve(sink)
        wait_for_replicas(bus, "workers", workers)
        for job in range(jobs):                               # the ventilator
            bus.proxy("workers").crunch.cast(job, 0.02)       # never blocks: the outbox sends
        killed = False
        deadline = time.monotonic() + 60
        while len(sink.done) < jobs and time.monotonic() < deadline:
            if not killed and len(sink.done) >= jobs // 2:
                pool[0].send_signal(signal.SIGKILL)          # stop a worker mid-run
                print(f"killed worker-{pool[0].pid} after {len(sink.done)} jobs")
                killed = True
            time.sleep(0.01)
    for p in pool:
        p.terminate()
        p.wait(10)
    per_worker = Counter(sink.done.values())
    for worker, n in sorted(per_worker.items()):
        print(f"{worker}: {n} jobs")
    print(f"done {len(sink.done)}/{jobs} jobs, {sink.duplicates} duplicate(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["run", "worker"], default="run")
    parser.add_argument("--url", help="transport URL (default: an embedded ZeroMQ hub)")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    if args.mode == "worker":
        with vertebra.connect(args.url) as out:
            vertebra.serve(Worker(out), url=args.url)       # until SIGTERM: drain, stop
    elif args.url:
        run(args.url, args.jobs, args.workers)
    else:
        with vertebra.Hub("tcp://127.0.0.1:0") as hub:
            run(hub.url, args.jobs, args.workers)


if __name__ == "__main__":
    main()
