"""What the dashboard shows, gathered with the public API of an :class:`~vertebra.AsyncBus`.

Every refresh asks ``bus.nodes()`` for the live services, each service's built-in stats
call for its figures (through :func:`vertebra.monitor.take_snapshot`, which also computes
the per-method rates between refreshes), ``bus.dead_letters(service)`` for every service
that has tasks, and ``bus.stats()`` for the dashboard's own bus.  The result is one plain
JSON-able map (see :meth:`Collector.refresh`), which the web app streams to the browsers.

``take_snapshot`` is written against the sync :class:`~vertebra.Bus`; it runs here in a
worker thread over :class:`ThreadBus`, a stand-in that forwards the two things it uses
(``nodes()`` and ``proxy(name)[method].future()``) to the async bus on its loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any, cast

from ..dispatch.bus import AsyncBus
from ..dispatch.sync import Bus
from ..monitor import Row, Snapshot, take_snapshot
from ..wire.deadletter import DeadLetter
from ..wire.info import ServiceInfo
from .workflows import WorkflowWatcher

__all__ = ["Collector", "ThreadBus"]

log = logging.getLogger("vertebra.dashboard")

RESERVED = "_vertebra"


class _ThreadMethod:
    """``proxy(name)[method]``: only ``future()``, which ``take_snapshot`` uses."""

    def __init__(self, owner: ThreadBus, service: str, method: str, timeout: float | None) -> None:
        self._owner, self._service, self._method, self._timeout = owner, service, method, timeout

    def future(self, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Start the call on the bus's loop; the answer, as a thread-safe future."""
        owner = self._owner
        fut = asyncio.run_coroutine_threadsafe(
            owner.bus.call(self._service, self._method, args, kwargs, timeout=self._timeout), owner.loop)
        owner.answers[self._service] = fut
        return fut


class _ThreadProxy:
    def __init__(self, owner: ThreadBus, service: str, timeout: float | None) -> None:
        self._owner, self._service, self._timeout = owner, service, timeout

    def __getitem__(self, method: str) -> _ThreadMethod:
        return _ThreadMethod(self._owner, self._service, method, self._timeout)


class ThreadBus:
    """The part of the sync bus API that :func:`~vertebra.monitor.take_snapshot` needs,
    over an async bus running on ``loop``; to be used from another thread.

    It remembers what it was asked and answered (``services``, and ``answers``: the stats
    call's future per service), so that the caller can show more than the snapshot's rows.
    """

    def __init__(self, bus: AsyncBus, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.bus, self.loop, self.timeout = bus, loop, timeout
        self.services: list[ServiceInfo] = []
        self.answers: dict[str, concurrent.futures.Future[Any]] = {}

    def nodes(self) -> list[ServiceInfo]:
        """The live services (``bus.nodes()``, waited for at most a few call timeouts)."""
        fut = asyncio.run_coroutine_threadsafe(self.bus.nodes(), self.loop)
        try:
            self.services = fut.result(timeout=4 * self.timeout + 5)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError("listing the services took too long") from None
        return self.services

    def proxy(self, service: str, timeout: float | None = None) -> _ThreadProxy:
        """A proxy whose methods only start calls (``[method].future()``)."""
        return _ThreadProxy(self, service, timeout)

    def raw_stats(self) -> dict[str, dict[str, Any]]:
        """The stats answers that arrived, by service."""
        out: dict[str, dict[str, Any]] = {}
        for name, fut in self.answers.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None \
                    and isinstance(fut.result(), dict):
                out[name] = fut.result()
        return out


def _method_row(r: Row | None, name: str, kind: str) -> dict[str, Any]:
    if r is None:
        return {"name": name, "kind": kind, "calls": None, "rate": None, "errors": None,
                "in_flight": None, "p50_ms": None, "p99_ms": None}
    return {"name": name, "kind": kind, "calls": r.calls, "rate": round(r.rate, 2), "errors": r.errors,
            "in_flight": r.in_flight, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms}


def service_entry(info: ServiceInfo, rows: list[Row], stats: dict[str, Any] | None) -> dict[str, Any]:
    """One service as the page shows it: what discovery says, and the figures of the
    replica that answered the stats call (``answered`` False when none did)."""
    by_name = {r.method: r for r in rows}
    names = [m.name for m in info.methods if not m.name.startswith(RESERVED)]
    names += sorted(n for n in by_name if n not in names and not n.startswith(RESERVED))
    kinds = {m.name: m.kind for m in info.methods}
    methods = [_method_row(by_name.get(n), n, kinds.get(n, by_name[n].kind if n in by_name else "?"))
               for n in names]
    stats = stats or {}
    bus = stats.get("bus") if isinstance(stats.get("bus"), dict) else {}
    return {"name": info.name, "doc": info.doc.strip().splitlines()[0] if info.doc.strip() else "",
            "replicas": info.replicas, "transport": info.transport,
            "answered": bool(stats), "replica": str(stats.get("replica", "")),
            "counts": dict(stats.get("counts") or {}), "pool": dict(stats.get("pool") or {}),
            "outbox": dict((bus or {}).get("outbox") or {}), "methods": methods}


def dead_letter_entry(d: DeadLetter) -> dict[str, Any]:
    """A dead letter as plain data, its error reduced to type, message and traceback."""
    return {"id": d.id, "service": d.service, "method": d.method, "args": d.args, "kwargs": d.kwargs,
            "attempts": d.attempts, "error": {"type": str(d.error.get("type", "")),
                                              "message": str(d.error.get("message", "")),
                                              "traceback": str(d.error.get("traceback", "")),
                                              "node": str(d.error.get("node", ""))}}


class Collector:
    """Refreshes the dashboard's state every ``interval`` seconds and tells waiting
    streams about each new one (:meth:`next_state`)."""

    def __init__(self, bus: AsyncBus, *, interval: float = 1.0, timeout: float = 2.0,
                 workflows: WorkflowWatcher | None = None) -> None:
        self.bus, self.interval, self.timeout = bus, interval, timeout
        self.workflows = workflows
        self.state: dict[str, Any] = {"version": 0, "url": bus.url, "services": [],
                                      "dead_letters": [], "workflows": [], "errors": []}
        self.version = 0
        self._previous: Snapshot | None = None
        self._task_services: set[str] = set()    # services seen with a task method, kept
        self._changed = asyncio.Condition()
        self._poke = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def refresh(self) -> dict[str, Any]:
        """Gather everything once and publish it as the new state, which has ``version``, ``url``,
        ``taken`` (a Unix time), ``services``, ``dead_letters``, ``workflows``, ``bus``
        (the dashboard's own ``bus.stats()``) and ``errors`` (what could not be read)."""
        errors: list[str] = []
        services: list[dict[str, Any]] = []
        adapter = ThreadBus(self.bus, asyncio.get_running_loop(), self.timeout)
        try:
            snap = await asyncio.to_thread(take_snapshot, cast(Bus, adapter), self._previous, self.timeout)
        except Exception as exc:
            errors.append(f"cannot list the services: {type(exc).__name__}: {exc}")
            services = list(self.state["services"])
        else:
            self._previous = snap
            raw = adapter.raw_stats()
            for info in adapter.services:
                rows = [r for r in snap.rows if r.service == info.name]
                services.append(service_entry(info, rows, raw.get(info.name)))
                if any(m.kind == "task" for m in info.methods):
                    self._task_services.add(info.name)
            errors += [f"{name}: no answer to the stats call" for name in snap.unreachable]
        dead, dead_errors = await self._dead_letters()
        errors += dead_errors
        state = {"url": self.bus.url, "taken": time.time(), "interval": self.interval,
                 "services": services, "dead_letters": dead,
                 "workflows": self.workflows.runs() if self.workflows else [],
                 "workflows_note": self.workflows.note if self.workflows else "",
                 "bus": self.bus.stats(), "errors": errors}
        await self._publish(state)
        return self.state

    async def _dead_letters(self) -> tuple[list[dict[str, Any]], list[str]]:
        names = sorted(self._task_services)

        async def one(name: str) -> list[DeadLetter]:
            return await asyncio.wait_for(self.bus.dead_letters(name), self.timeout * 2)

        found = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
        dead: list[dict[str, Any]] = []
        errors: list[str] = []
        for name, result in zip(names, found, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                errors.append(f"{name}: cannot list dead letters: {type(result).__name__}: {result}")
                continue
            dead += [dead_letter_entry(d) for d in result]
        return dead, errors

    async def replay(self, service: str, ids: list[str] | None) -> int:
        """``bus.replay(service, ids)``, then a refresh soon, so that the page shows it."""
        n = await self.bus.replay(service, ids)
        self.poke()
        return n

    def poke(self) -> None:
        """Refresh now rather than at the end of the interval."""
        self._poke.set()

    async def _publish(self, state: dict[str, Any]) -> None:
        async with self._changed:
            self.version += 1
            self.state = {**state, "version": self.version}
            self._changed.notify_all()

    async def next_state(self, seen: int) -> dict[str, Any]:
        """The newest state once it is newer than version ``seen`` (at once if it is)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.version > seen)
            return self.state

    async def run(self) -> None:
        """Refresh until cancelled: every ``interval`` seconds, or sooner when poked."""
        while True:
            self._poke.clear()          # a poke during the refresh makes the next one at once
            try:
                await self.refresh()
            except Exception:
                log.exception("dashboard refresh failed")
            try:
                await asyncio.wait_for(self._poke.wait(), self.interval)
            except TimeoutError:
                pass

    def start(self) -> None:
        """Run :meth:`run` in a task of the current loop."""
        if self._runner is None:
            self._runner = asyncio.create_task(self.run(), name="vertebra-dashboard-collector")

    async def stop(self) -> None:
        """Stop refreshing."""
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
            self._runner = None
