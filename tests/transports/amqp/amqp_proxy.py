"""A TCP proxy between a bus and RabbitMQ that injects faults on the wire: a link that goes
silent but stays open (``freeze_all``), links cut (``cut_all``), new links refused while
``refusing`` is set (a broker that is down for this bus only), and links held still
without losing a byte (``pause_all`` / ``resume_all``: the bus sees what the broker said
only later)."""

from __future__ import annotations

import asyncio
import threading


class LinkProxy:
    """Forwards 127.0.0.1:<port> to the broker's port.

    It runs its own event loop in a thread: the transport's declarations briefly block the
    test's loop, and a proxy on that loop would then never forward their answers."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen: list[bool] = []       # one flag per link, shared with its pumps
        self.writers: list[asyncio.StreamWriter] = []
        self.refusing = False
        self.refused = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0

    async def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                server = await asyncio.start_server(self._link, "127.0.0.1", 0)
                self.port = server.sockets[0].getsockname()[1]
                self.stop = asyncio.Event()
                self.flowing = asyncio.Event()
                self.flowing.set()
                ready.set()
                await self.stop.wait()
                server.close()
                for w in self.writers:          # end every link before the loop closes
                    w.close()
                others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in others:
                    t.cancel()
                await asyncio.gather(*others, return_exceptions=True)
            self.loop.run_until_complete(main())
            self.loop.close()

        threading.Thread(target=run, daemon=True).start()
        await asyncio.to_thread(ready.wait, 10)

    def url(self, url: str, broker_port: int) -> str:
        """``url`` with the broker's port replaced by the proxy's."""
        return url.replace(f":{broker_port}/", f":{self.port}/")

    async def _link(self, r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            w1.close()
            return
        r2, w2 = await asyncio.open_connection("127.0.0.1", self.target_port)
        idx = len(self.frozen)
        self.frozen.append(False)
        self.writers += [w1, w2]

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    await self.flowing.wait()
                    if not self.frozen[idx]:
                        w.write(data)
                        await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pump(r1, w2), pump(r2, w1))

    def freeze_all(self) -> None:
        """Every open link stops forwarding, and stays open."""
        self.frozen[:] = [True] * len(self.frozen)

    def pause_all(self) -> None:
        """Hold every byte in the proxy (nothing is lost) until :meth:`resume_all`."""
        async def pause() -> None:
            self.flowing.clear()
        asyncio.run_coroutine_threadsafe(pause(), self.loop).result(10)

    def resume_all(self) -> None:
        """Forward again, what was held first."""
        self.loop.call_soon_threadsafe(self.flowing.set)

    def cut_all(self) -> None:
        """Close every open link (from the proxy's thread)."""
        def cut() -> None:
            for w in self.writers:
                w.close()
            self.writers.clear()
        self.loop.call_soon_threadsafe(cut)

    async def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
