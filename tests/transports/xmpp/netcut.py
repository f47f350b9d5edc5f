"""A loopback TCP relay to put between one bus and Prosody, so that a test can take that
bus's network away (connections cut, new ones refused) and give it back, while every other
bus stays connected."""

from __future__ import annotations

import asyncio
import contextlib
import socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Relay:
    """``127.0.0.1:port`` relays to ``127.0.0.1:target`` while it is up."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = _free_port()
        self.accepted = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, url: str, server_port: int) -> str:
        """``url`` (a URL for the server) pointed at the relay instead."""
        return url.replace(f":{server_port}?", f":{self.port}?", 1)

    async def up(self) -> None:
        """Listen (again) on the same port."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port,
                                                  reuse_address=True)

    async def down(self) -> None:
        """Cut every relayed connection and refuse new ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
