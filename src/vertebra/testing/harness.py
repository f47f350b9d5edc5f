"""Harnesses: the buses of one test on one URL, the nodes they serve, their recorders.

Every node is served on a bus of its own (as it would run in its own process) and
:meth:`Harness.served` returns only once the test's client bus lists it in discovery —
once a call to it can be routed, on any transport.  :meth:`Harness.close` undoes
everything: fake clocks, served nodes (drained), buses (flushed within ``linger``).

Outside pytest they are context managers::

    with Harness("memory://t1") as h:
        h.served(Calc())
        assert h.client.proxy("calc").add(2, 3) == 5
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from ..dispatch.bus import AsyncBus
from ..dispatch.service import Servable
from ..dispatch.sync import Bus
from .clock import FakeClock
from .recorder import Record, Recorder, RecordingService

__all__ = ["AsyncHarness", "Harness"]

POLL = 0.02
"""Seconds between two discovery requests while waiting for a service to be routable."""


def _missing(wanted: set[str], listed: list[Any]) -> set[str]:
    return wanted - {s.name for s in listed}


def _not_routable(missing: set[str], timeout: float, url: str) -> TimeoutError:
    return TimeoutError(f"{', '.join(sorted(missing))} not routable on {url} within {timeout:g}s")


class Harness:
    """Sync buses for one test (see the module docstring); ``options`` go to every bus."""

    def __init__(self, url: str, *, timeout: float = 10.0, linger: float = 1.0, **options: Any) -> None:
        self.url = url
        self.timeout = timeout
        """Seconds :meth:`served` waits for discovery to list a node."""
        self.linger = linger
        self.options = options
        self._buses: list[Bus] = []
        self._undo: list[Callable[[], None]] = []
        self._client: Bus | None = None

    @property
    def client(self) -> Bus:
        """The test's own bus (made on first use)."""
        if self._client is None:
            self._client = self.bus()
        return self._client

    def bus(self, **options: Any) -> Bus:
        """A new sync bus on the harness's URL, closed by :meth:`close`."""
        bus = Bus(self.url, **{"linger": self.linger, **self.options, **options})
        self._buses.append(bus)
        return bus

    def served(self, *nodes: Servable, bus: Bus | None = None, clock: FakeClock | None = None,
               timeout: float | None = None) -> Bus:
        """Serve ``nodes`` (on a new bus, or ``bus``) and return that bus once the client
        lists every one of them.  With ``clock``, their task retries (and that bus's
        outbox) run on the fake clock until the harness closes."""
        target = bus if bus is not None else self.bus()
        before = len(target.core.runtimes)
        target.serve(*nodes)
        names = {rt.info.name for rt in target.core.runtimes[before:]}
        if clock is not None:
            self._undo.append(clock.install(target))
        self.wait_routable(*names, timeout=timeout)
        return target

    def wait_routable(self, *services: str, timeout: float | None = None) -> None:
        """Block until the client's ``nodes()`` lists every one of ``services``."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while missing := _missing(set(services), self.client.nodes()):
            if time.monotonic() > deadline:
                raise _not_routable(missing, timeout, self.url)
            time.sleep(POLL)

    def record(self, service: str, answers: Mapping[str, Any] | None = None, *,
               bus: Bus | None = None) -> Recorder:
        """Serve a stand-in for ``service`` that records every call, cast and task sent to
        it (see :class:`~vertebra.testing.RecordingService` for ``answers``)."""
        stand_in = RecordingService(service, answers)
        served = self.served(stand_in, bus=bus)
        stand_in.recorder.loop = served.portal.loop
        return stand_in.recorder

    def record_events(self, pattern: str, *, bus: Bus | None = None) -> Recorder:
        """Subscribe (on a new bus, or ``bus``) to ``pattern``; record every event."""
        target = bus if bus is not None else self.bus()
        rec = Recorder(f"events {pattern}")
        rec.loop = target.portal.loop
        target.subscribe(pattern, lambda topic, payload: rec.add(Record("event", topic=topic,
                                                                        payload=payload)))
        return rec

    def close(self) -> None:
        """Put fake clocks back, drain served nodes, flush and close every bus."""
        while self._undo:
            self._undo.pop()()
        buses, self._buses, self._client = self._buses, [], None
        for bus in reversed(buses):
            bus.close(self.linger)

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncHarness:
    """The async twin of :class:`Harness`: the same methods, as coroutines, on the
    caller's event loop."""

    def __init__(self, url: str, *, timeout: float = 10.0, linger: float = 1.0, **options: Any) -> None:
        self.url = url
        self.timeout = timeout
        self.linger = linger
        self.options = options
        self._buses: list[AsyncBus] = []
        self._undo: list[Callable[[], None]] = []
        self._client: AsyncBus | None = None

    async def client(self) -> AsyncBus:
        """The test's own bus (started on first use)."""
        if self._client is None:
            self._client = await self.bus()
        return self._client

    async def bus(self, **options: Any) -> AsyncBus:
        """A new started bus on the harness's URL, closed by :meth:`close`."""
        bus = AsyncBus(self.url, **{"linger": self.linger, **self.options, **options})
        await bus.start()
        self._buses.append(bus)
        return bus

    async def served(self, *nodes: Servable, bus: AsyncBus | None = None,
                     clock: FakeClock | None = None, timeout: float | None = None) -> AsyncBus:
        """Serve ``nodes`` (on a new bus, or ``bus``); return that bus once the client
        lists every one of them (see :meth:`Harness.served`)."""
        target = bus if bus is not None else await self.bus()
        before = len(target.runtimes)
        await target.serve(*nodes)
        names = {rt.info.name for rt in target.runtimes[before:]}
        if clock is not None:
            self._undo.append(clock.install(target))
        await self.wait_routable(*names, timeout=timeout)
        return target

    async def wait_routable(self, *services: str, timeout: float | None = None) -> None:
        """Wait until the client's ``nodes()`` lists every one of ``services``."""
        timeout = self.timeout if timeout is None else timeout
        client = await self.client()
        deadline = time.monotonic() + timeout
        while missing := _missing(set(services), await client.nodes()):
            if time.monotonic() > deadline:
                raise _not_routable(missing, timeout, self.url)
            await asyncio.sleep(POLL)

    async def record(self, service: str, answers: Mapping[str, Any] | None = None, *,
                     bus: AsyncBus | None = None) -> Recorder:
        """Serve a recording stand-in for ``service`` (see :meth:`Harness.record`)."""
        stand_in = RecordingService(service, answers)
        await self.served(stand_in, bus=bus)
        stand_in.recorder.loop = asyncio.get_running_loop()
        return stand_in.recorder

    async def record_events(self, pattern: str, *, bus: AsyncBus | None = None) -> Recorder:
        """Subscribe (on a new bus, or ``bus``) to ``pattern``; record every event."""
        target = bus if bus is not None else await self.bus()
        rec = Recorder(f"events {pattern}")
        rec.loop = asyncio.get_running_loop()
        await target.subscribe(pattern, lambda topic, payload: rec.add(Record("event", topic=topic,
                                                                              payload=payload)))
        return rec

    async def close(self) -> None:
        """Put fake clocks back, drain served nodes, flush and close every bus."""
        while self._undo:
            self._undo.pop()()
        buses, self._buses, self._client = self._buses, [], None
        for bus in reversed(buses):
            await bus.close(self.linger)

    async def __aenter__(self) -> AsyncHarness:
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
