"""Fixtures for the zmq:// transport tests: an embedded hub and transports on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from vertebra.transports.zmq import Hub, ZmqTransport
from vertebra.wire.codec import get_codec
from vertebra.wire.envelope import Envelope


@pytest.fixture
def hub() -> Iterator[Hub]:
    with Hub("tcp://127.0.0.1:0", heartbeat=0.2, liveness=3) as h:
        yield h


class Client:
    """A transport plus a queue of the answers it received."""

    def __init__(self, t: ZmqTransport) -> None:
        self.t = t
        self.answers: asyncio.Queue[Envelope] = asyncio.Queue()

    async def call(self, service: str, method: str = "m", *args: Any, timeout: float = 20.0) -> Envelope:
        env = Envelope("call", service=service, method=method, args=list(args),
                       deadline=time.time() + timeout)
        await self.t.send(env)
        while True:
            answer = await asyncio.wait_for(self.answers.get(), timeout)
            if answer.re == env.id:
                return answer


OpenClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def open_client(hub: Hub) -> AsyncIterator[OpenClient]:
    made: list[Client] = []

    async def factory(url: str | None = None, codec: str = "msgpack") -> Client:
        t = ZmqTransport(url or hub.url + "?heartbeat=0.2", get_codec(codec))
        c = Client(t)
        await t.connect(c.answers.put_nowait)
        made.append(c)
        return c

    yield factory
    for c in made:
        await c.t.close()


async def eventually(cond: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Wait for ``cond``; the timeout is a hang guard, never a speed requirement."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)
