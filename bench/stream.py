"""Streamed results against plain calls returning the same data, per transport, side by
side in one run: items/s and MB/s for small items (100 B) and 64 KiB chunks.

    python -m bench.stream [--runs 5] [--transports memory,zmq,amqp,xmpp] [--amqp URL]
                           [--small 5000] [--large 400] [--codec json] [--window 32]

Rows, per transport and item size (the node and the client are two buses in this
process, on one event loop; zmq runs on an embedded hub, xmpp on a private Prosody
(tests/servers/xmpp.py), amqp on the broker at ``--amqp``):

  plain calls            ``await files.item(size)``, one call per item, one at a time
  plain calls, W in flight   the same with ``--window`` calls in flight
  stream (async gen)     ``async for x in files.items.stream(n, size)``: an async generator
  stream (sync gen)      the same from a plain generator (its next() runs in the node's pool)

Each figure is the median of ``--runs`` runs (interleaved, so drift on a noisy machine hits
every case); the ratio is to the plain one-at-a-time calls of the same transport and size,
measured in the same run.  MB/s counts the items' bytes (10^6 bytes), not the envelopes'.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import vertebra
from vertebra import Node, rpc

from .servers import transport_urls

SMALL = 100
LARGE = 64 * 1024


class Source(Node):
    """Hands out ``size`` bytes: per call, or ``n`` times in one stream."""

    name = "bench-stream"
    concurrency = 64

    @rpc
    async def item(self, size: int) -> bytes:
        """One item."""
        return b"x" * size

    @rpc
    async def items(self, n: int, size: int) -> AsyncIterator[bytes]:
        """``n`` items, streamed by an async generator."""
        data = b"x" * size
        for _ in range(n):
            yield data

    @rpc
    def items_sync(self, n: int, size: int) -> Iterator[bytes]:
        """``n`` items, streamed by a plain generator."""
        data = b"x" * size
        for _ in range(n):
            yield data


async def timed(fn: Callable[[], Awaitable[int]]) -> float:
    """Seconds ``fn`` took; it returns how many bytes it got, checked by the caller."""
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


def cases(bus: vertebra.AsyncBus, n: int, size: int,
          window: int) -> dict[str, Callable[[], Awaitable[int]]]:
    src = bus.proxy("bench-stream", timeout=300.0)

    async def plain() -> int:
        got = 0
        for _ in range(n):
            got += len(await src.item(size))
        return got

    async def pipelined() -> int:
        left = iter(range(n))

        async def worker() -> int:
            got = 0
            for _ in left:
                got += len(await src.item(size))
            return got

        return sum(await asyncio.gather(*(worker() for _ in range(window))))

    def streamed(method: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            got = 0
            async for x in src[method].stream(n, size):
                got += len(x)
            return got
        return run

    return {"plain calls": plain, f"plain calls, {window} in flight": pipelined,
            "stream (async generator)": streamed("items"),
            "stream (sync generator)": streamed("items_sync")}


async def bench_transport(node_url: str, client_url: str, runs: int, sizes: dict[int, int],
                          codec: str, window: int) -> list[tuple[int, str, float]]:
    """(size, case, median seconds for its n items) for every case."""
    async with vertebra.connect_async(node_url, codec=codec) as node, \
            vertebra.connect_async(client_url, codec=codec, stream_window=window) as bus:
        await node.serve(Source())
        table = {size: cases(bus, n, size, window) for size, n in sizes.items()}
        for size, by_case in table.items():          # warm up, and check every case
            for name, fn in by_case.items():
                assert await fn() == sizes[size] * size, name
        seconds: dict[tuple[int, str], list[float]] = {}
        for _ in range(runs):
            for size, by_case in table.items():
                for name, fn in by_case.items():
                    seconds.setdefault((size, name), []).append(await timed(fn))
    return [(size, name, statistics.median(s)) for (size, name), s in seconds.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--transports", default="memory,zmq,amqp,xmpp")
    ap.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    ap.add_argument("--small", type=int, default=5000, help=f"items of {SMALL} B per run")
    ap.add_argument("--large", type=int, default=400, help=f"items of {LARGE // 1024} KiB per run")
    ap.add_argument("--codec", default="json", choices=["json", "msgpack"])
    ap.add_argument("--window", type=int, default=32, help="the stream_window (and calls in flight)")
    args = ap.parse_args()
    sizes = {SMALL: args.small, LARGE: args.large}
    print(f"{time.strftime('%Y-%m-%d')}, codec {args.codec}, window {args.window}, "
          f"median of {args.runs} runs")
    print(f"{'transport':<9} {'item':>6} {'case':<28} {'items/s':>10} {'MB/s':>8} {'vs plain':>9}")
    for name in args.transports.split(","):
        with transport_urls(name, args.amqp, "bench-stream") as (node_url, client_url):
            rows = asyncio.run(bench_transport(node_url, client_url, args.runs, sizes,
                                               args.codec, args.window))
        base = {size: secs for size, case, secs in rows if case == "plain calls"}
        for size, case, secs in rows:
            n = sizes[size]
            label = f"{size} B" if size < 1024 else f"{size // 1024} KiB"
            print(f"{name:<9} {label:>6} {case:<28} {n / secs:>10,.0f} {n * size / secs / 1e6:>8.1f} "
                  f"{base[size] / secs:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
