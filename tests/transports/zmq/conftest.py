"""Fixtures for the zmq:// transport tests: an embedded hub and transports on it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.util import eventually as eventually  # the zmq tests import it from here
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




ROOT = Path(__file__).resolve().parents[3]


class Proc:
    """A replica in its own process (worker_proc.py); its stdout lines are collected."""

    def __init__(self, url: str, service: str, mode: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "tests.transports.zmq.worker_proc", url, service, mode],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []

    async def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while True:
            assert self.p.stdout is not None
            line = await asyncio.wait_for(loop.run_in_executor(None, self.p.stdout.readline),
                                          max(0.1, deadline - time.monotonic()))
            if not line:
                raise AssertionError(f"worker exited before printing {prefix!r}")
            self.lines.append(line.strip())
            if line.startswith(prefix):
                return line.strip()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait()


@pytest.fixture
def procs():
    made: list[Proc] = []
    yield lambda *a: made.append(Proc(*a)) or made[-1]
    for p in made:
        p.kill()
