"""Round trips per second through the whole stack in one process, beside a bare
asyncio.Queue ping-pong measured in the same run.

    python -m bench.inproc [--seconds 1.0] [--repeat 5]

Each figure is the median of ``--repeat`` runs of ``--seconds`` each; the ratio to the
bare ping-pong is the number that matters (issue 2 asks ≥ 0.25 for async calls).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import vertebra
from vertebra import Node, rpc

PAYLOAD = "x" * 100


class Echo(Node):
    """Echo service, one async and one sync handler."""

    name = "echo"
    concurrency = 64

    @rpc
    async def aecho(self, value: str) -> str:
        """Async echo."""
        return value

    @rpc
    def echo(self, value: str) -> str:
        """Sync echo (runs in the node's thread pool)."""
        return value


async def rate(step: Callable[[], Awaitable[object]], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(100):
            await step()
        n += 100
        now = time.perf_counter()
        if now >= end:
            return n / (now - start)


async def bare_queue(seconds: float) -> float:
    requests: asyncio.Queue[str] = asyncio.Queue()
    replies: asyncio.Queue[str] = asyncio.Queue()

    async def server() -> None:
        while True:
            replies.put_nowait(await requests.get())

    task = asyncio.create_task(server())

    async def step() -> str:
        requests.put_nowait(PAYLOAD)
        return await replies.get()

    try:
        return await rate(step, seconds)
    finally:
        task.cancel()


async def vertebra_async(method: str, codec: str, seconds: float) -> float:
    async with vertebra.connect_async(f"memory://bench-{method}-{codec}", codec=codec) as bus:
        await bus.serve(Echo())
        call = bus.proxy("echo")[method]
        return await rate(lambda: call(PAYLOAD), seconds)


def vertebra_sync(seconds: float) -> float:
    with vertebra.connect("memory://bench-sync") as bus:
        bus.serve(Echo())
        call = bus.proxy("echo").aecho
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(100):
                call(PAYLOAD)
            n += 100
        return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows: dict[str, list[float]] = {}
    secs = args.seconds
    cases: dict[str, Callable[[], float]] = {
        "bare asyncio.Queue ping-pong": lambda: asyncio.run(bare_queue(secs)),
        "vertebra async call, async handler (json)": lambda: asyncio.run(
            vertebra_async("aecho", "json", secs)),
        "vertebra async call, async handler (msgpack)": lambda: asyncio.run(
            vertebra_async("aecho", "msgpack", secs)),
        "vertebra async call, sync handler (json)": lambda: asyncio.run(vertebra_async("echo", "json", secs)),
        "vertebra sync call from a thread (json)": lambda: vertebra_sync(secs),
    }
    for _ in range(args.repeat):     # interleaved, so drift on a noisy machine hits every case
        for name, case in cases.items():
            rows.setdefault(name, []).append(case())
    base = statistics.median(rows["bare asyncio.Queue ping-pong"])
    print(f"{'case':<48} {'round trips/s (median)':>22} {'ratio':>7}")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"{name:<48} {med:>22,.0f} {med / base:>7.3f}")


if __name__ == "__main__":
    main()
