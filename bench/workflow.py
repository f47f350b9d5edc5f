"""Workflows per second and their latency: a 5-step chain and a 100-wide fan-out/fan-in,
orchestrated vs choreographed, beside the same steps as plain sequential proxy calls —
per transport, side by side in one run.

    python -m bench.workflow [--runs 50] [--amqp URL] [--transports memory,zmq,amqp,xmpp]

zmq runs on an embedded hub, xmpp on a private Prosody (tests/servers/xmpp.py), amqp on
the broker at ``--amqp``.

Choreographed fan-out/fan-in does not exist (a join needs a coordinator), so that cell is
"n/a". Figures are medians over the runs; ratios are to the plain calls of the same
transport.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable

import vertebra
from vertebra import Node, rpc
from vertebra.workflow import fan_out, step

from .servers import transport_urls


class Steps(Node):
    """Cheap steps, so that the figures are the machinery's."""

    name = "steps"
    concurrency = 64

    @rpc
    async def inc(self, x: int) -> int:
        """x + 1."""
        return x + 1

    @rpc
    async def split(self, n: int) -> list[int]:
        """range(n)."""
        return list(range(n))

    @rpc
    async def total(self, xs: list[int]) -> int:
        """sum."""
        return sum(xs)


CHAIN = step("steps.inc") | step("steps.inc") | step("steps.inc") | step("steps.inc") | step("steps.inc")
FAN = step("steps.split") | fan_out(step("steps.inc")) | step("steps.total")


async def measure(fn: Callable[[], Awaitable[object]], runs: int) -> tuple[float, float, float]:
    lat = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        lat.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    lat.sort()
    return runs / elapsed, statistics.median(lat) * 1000, lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000


async def bench_transport(node_url: str, client_url: str,
                          runs: int) -> list[tuple[str, tuple[float, float, float] | None]]:
    async with vertebra.connect_async(node_url) as node, vertebra.connect_async(client_url) as bus:
        await node.serve(Steps())
        s = bus.proxy("steps")

        async def plain_chain() -> int:
            x = 1
            for _ in range(5):
                x = await s.inc(x)
            return x

        async def plain_fan() -> int:
            xs = await s.split(100)
            return int(await s.total([await s.inc(x) for x in xs]))

        assert await CHAIN.run_async(bus, 1) == await plain_chain() == 6
        assert await CHAIN.run_async(bus, 1, mode="choreographed") == 6
        assert await FAN.run_async(bus, 100) == await plain_fan()
        return [
            ("5-step chain, plain sequential calls", await measure(plain_chain, runs)),
            ("5-step chain, orchestrated", await measure(lambda: CHAIN.run_async(bus, 1), runs)),
            ("5-step chain, choreographed", await measure(
                lambda: CHAIN.run_async(bus, 1, mode="choreographed"), runs)),
            ("100-wide fan-out/in, plain sequential calls", await measure(plain_fan, max(5, runs // 5))),
            ("100-wide fan-out/in, orchestrated", await measure(lambda: FAN.run_async(bus, 100),
                                                                max(5, runs // 5))),
            ("100-wide fan-out/in, choreographed", None),
        ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    ap.add_argument("--transports", default="memory,zmq,amqp,xmpp")
    args = ap.parse_args()
    with contextlib.ExitStack() as servers:
        urls = {name: servers.enter_context(transport_urls(name, args.amqp, "bench-workflow"))
                for name in args.transports.split(",")}
        table(urls, args.runs)


def table(urls: dict[str, tuple[str, str]], runs: int) -> None:
    """Run every case on every transport and print the table."""
    print(f"{'transport':<8} {'case':<44} {'workflows/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'vs plain':>9}")
    for name, (node_url, client_url) in urls.items():
        rows = asyncio.run(bench_transport(node_url, client_url, runs))
        plain = {"5": rows[0][1], "1": rows[3][1]}
        for case, fig in rows:
            if fig is None:
                print(f"{name:<8} {case:<44} {'n/a (a join needs a coordinator)':>40}")
                continue
            base = plain[case[0]]
            ratio = fig[0] / base[0] if base else 0.0
            print(f"{name:<8} {case:<44} {fig[0]:>12,.1f} {fig[1]:>8.2f} {fig[2]:>8.2f} {ratio:>9.2f}")


if __name__ == "__main__":
    main()
