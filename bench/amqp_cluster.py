"""vertebra on one RabbitMQ node against a three-node cluster, side by side in one run.

    python bench/amqp_cluster.py [--n 2000] [--tasks 5000] [--runs 3]

Starts its own brokers on loopback (tests/servers: one private node, and a private
three-node cluster; the broker on 5672 is not used) and measures, for each of:

* 1 node, classic queues (the default for a URL naming one broker)
* 1 node, quorum queues (``?queue_type=quorum``: what replication costs without a cluster)
* 3 nodes, quorum queues (the default for a URL naming several brokers); the node serves
  through node 2, the client calls through node 3 (every message crosses nodes), and the
  task queue's leader is the client's node

these figures, each the median of ``--runs`` runs (a fresh namespace and server each run):

* call latency, one call in flight (p50, p99, calls/s)
* calls, 100 in flight (calls/s)
* confirmed task publishing, send window 100 (tasks/s until every confirm came)
* tasks end to end: sent by the client, run by one worker (concurrency 16), until the
  worker has run all of them (tasks/s)

The server is a separate process (this script with --serve).  On a 2-core machine the
three broker nodes, the server and the client share the cores: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/amqp.py would shadow py-amqp: keep this directory off the path, the repo root on it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

PAYLOAD = "x" * 100


def serve(url: str) -> None:
    """The server process: echo calls, count tasks."""
    import vertebra
    from vertebra import Node, rpc, task

    class Echo(Node):
        name = "echo"

        def __init__(self) -> None:
            self.count = 0

        @rpc
        async def echo(self, value: Any) -> Any:
            return value

        @rpc
        async def processed(self) -> int:
            return self.count

        @task
        async def sink(self, value: Any) -> None:
            self.count += 1

    vertebra.serve(Echo(), url=url)


def spawn_server(url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", url], env=env)


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


async def measure(client_url: str, n: int, tasks: int) -> dict[str, float]:
    """One run against a server already started: every figure of the module docstring."""
    import vertebra

    out: dict[str, float] = {}
    async with vertebra.connect_async(client_url, send_window=100, outbox_size=tasks + 100) as bus:
        echo = bus.proxy("echo", timeout=30)
        deadline = time.monotonic() + 60
        while True:                                       # until the server serves
            try:
                await echo.echo(PAYLOAD)
                break
            except vertebra.Unreachable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        for _ in range(100):
            await echo.echo(PAYLOAD)
        lat = []
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            await echo.echo(PAYLOAD)
            lat.append(time.perf_counter() - t)
        out["call_rate"] = n / (time.perf_counter() - t0)
        out["call_p50"], out["call_p99"] = pct(lat, .5) * 1e6, pct(lat, .99) * 1e6

        left = [n * 5]

        async def lane() -> None:
            while left[0] > 0:
                left[0] -= 1
                await echo.echo(PAYLOAD)

        t0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(100)))
        out["pipe_rate"] = n * 5 / (time.perf_counter() - t0)

        base = await echo.processed()
        t0 = time.perf_counter()
        for _ in range(tasks):
            bus.cast("echo", "sink", [PAYLOAD], kind="task")
        left_over = await bus.flush(300)
        out["publish_rate"] = (tasks - left_over) / (time.perf_counter() - t0)
        while await echo.processed() - base < tasks:
            await asyncio.sleep(0.02)
        out["task_rate"] = tasks / (time.perf_counter() - t0)
    return out


def start_brokers(tmp: Path) -> tuple[Any, Any]:
    """A private node and a private three-node cluster, started side by side."""
    from tests.servers.amqp import PrivateNode
    from tests.servers.rabbit_cluster import Cluster

    node = PrivateNode(tmp / "single", "rabbit_vtb")
    cluster = Cluster(tmp / "cluster")
    failure: list[BaseException] = []

    def boot_cluster() -> None:
        try:
            cluster.start()
        except BaseException as exc:   # reported below
            failure.append(exc)

    t = threading.Thread(target=boot_cluster)
    t.start()
    node.start()
    node.wait_ready()
    t.join()
    if failure:
        node.stop()
        raise failure[0]
    return node, cluster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="calls per latency figure")
    ap.add_argument("--tasks", type=int, default=5000, help="tasks per throughput figure")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--serve")
    ap.add_argument("--dir", help="where the brokers keep their data (default: a temporary "
                    "directory, removed afterwards)")
    a = ap.parse_args()
    if a.serve:
        serve(a.serve)
        return

    t0 = time.monotonic()
    data = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="vertebra-bench-cluster-"))
    node, cluster = start_brokers(data)
    print(f"brokers up in {time.monotonic() - t0:.1f}s (cluster ports {cluster.ports}, "
          f"single node port {node.port})", flush=True)
    single = f"amqp://guest:guest@127.0.0.1:{node.port}/%2F"
    targets = {
        "1 node, classic": (single, single, ""),
        "1 node, quorum": (single, single, "&queue_type=quorum"),
        "3 nodes, quorum": (cluster.reorder(cluster.url, 1), cluster.reorder(cluster.url, 2), ""),
    }
    results: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
    try:
        for run in range(a.runs):
            for name, (server_url, client_url, extra) in targets.items():
                query = f"?prefix=bench-{uuid.uuid4().hex[:6]}.{extra}"
                # The client declares the task queue first: on the cluster its node leads it.
                proc = spawn_server(server_url + query)
                try:
                    r = asyncio.run(measure(client_url + query, a.n, a.tasks))
                finally:
                    proc.terminate()
                    proc.wait()
                results[name].append(r)
                print(f"run {run + 1} {name}: " + ", ".join(f"{k} {v:,.0f}" for k, v in r.items()),
                      flush=True)
    finally:
        cluster.stop()
        node.stop()
        if not a.dir:
            shutil.rmtree(data, ignore_errors=True)

    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    rows = [("calls, 1 in flight: calls/s", "call_rate"), ("calls, 1 in flight: p50 µs", "call_p50"),
            ("calls, 1 in flight: p99 µs", "call_p99"), ("calls, 100 in flight: calls/s", "pipe_rate"),
            ("confirmed task publishing: tasks/s", "publish_rate"),
            ("tasks end to end, 1 worker: tasks/s", "task_rate")]
    names = list(targets)
    print(f"\nAMQP 1 node vs 3-node cluster, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} "
          f"cores, 100-byte payloads, n={a.n}, tasks={a.tasks}, medians of {a.runs} runs\n")
    print(f"| what | {' | '.join(names)} | 3 nodes / 1 node classic |")
    print("|---|" + "---:|" * (len(names) + 1))
    for label, key in rows:
        vals = [med[n][key] for n in names]
        ratio = vals[-1] / vals[0] if vals[0] else 0.0
        print(f"| {label} | " + " | ".join(f"{v:,.0f}" for v in vals) + f" | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
