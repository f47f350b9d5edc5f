"""Faults on the wire: a TCP proxy between the bus and RabbitMQ stops forwarding (a dead
link that stays open); heartbeats notice, the transport reconnects and serves again."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from amqp_nodes import Jobs

import vertebra


class FreezingProxy:
    """Forwards 127.0.0.1:<port> to the broker until frozen; frozen links stay open, silent.

    It runs its own event loop in a thread: the transport's declarations briefly block the
    test's loop, and a proxy on that loop would then never forward their answers."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen: list[bool] = []       # one flag per link, shared with its pumps
        self.loop = asyncio.new_event_loop()
        self.port = 0

    async def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                server = await asyncio.start_server(self._link, "127.0.0.1", 0)
                self.port = server.sockets[0].getsockname()[1]
                self.stop = asyncio.Event()
                ready.set()
                await self.stop.wait()
                server.close()
            self.loop.run_until_complete(main())
            self.loop.close()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)

    async def _link(self, r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        r2, w2 = await asyncio.open_connection("127.0.0.1", self.target_port)
        idx = len(self.frozen)
        self.frozen.append(False)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    if not self.frozen[idx]:
                        w.write(data)
                        await w.drain()
            except (ConnectionError, OSError):
                pass

        await asyncio.gather(pump(r1, w2), pump(r2, w1))
        for w in (w1, w2):
            w.close()

    def freeze_all(self) -> None:
        self.frozen[:] = [True] * len(self.frozen)

    async def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)


@pytest.mark.slow
async def test_a_silent_link_is_detected_by_heartbeats_and_the_bus_recovers(ns, amqp_server):
    proxy = FreezingProxy(amqp_server.port)
    await proxy.start()
    direct = ns("jobs")
    via_proxy = direct.replace(f":{amqp_server.port}/", f":{proxy.port}/") + "&heartbeat=1"
    try:
        async with vertebra.connect_async(direct) as server, \
                vertebra.connect_async(via_proxy) as client:
            await server.serve(Jobs())
            assert await client.call("jobs", "ping") == "pong"
            proxy.freeze_all()
            # a call in flight on the dead link is answered Unreachable once the loss is
            # noticed, long before its own 60 s deadline
            with pytest.raises(vertebra.Unreachable, match="connection to the broker was lost"):
                await client.call("jobs", "ping", timeout=60)
            deadline = time.monotonic() + 30
            while client.transport.stats["reconnects"] < 1:
                assert time.monotonic() < deadline, "never reconnected"
                await asyncio.sleep(0.05)
            assert await client.call("jobs", "ping", timeout=10) == "pong"
    finally:
        await proxy.close()
