"""The sync API: a thin facade that runs an :class:`AsyncBus` on a portal thread.

Every method is safe to call from many threads at once.  ``cast`` and ``publish`` go
straight into the thread-safe outbox and never wait for the loop.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import signal
import threading
from types import TracebackType
from typing import Any

from ..wire.deadletter import DeadLetter
from ..wire.info import ServiceInfo
from .bus import AsyncBus, EventCallback
from .options import CallOptions
from .portal import Portal
from .service import Servable
from .streams import SyncStream

__all__ = ["Bus", "Method", "Proxy"]

_open_buses: set[Bus] = set()
"""Every sync bus not yet closed, held strongly: a bus that a program dropped without
closing (a local of a function that returned, a thread that ended) is still flushed at
exit, never collected with its outbox unsent."""
_open_lock = threading.Lock()


def _forget_parent_buses() -> None:
    """In a forked child: the parent's buses are not ours to flush (their thread is gone)."""
    global _open_lock
    _open_lock = threading.Lock()
    _open_buses.clear()


os.register_at_fork(after_in_child=_forget_parent_buses)


class Method:
    """One remote method, for sync code: ``m(...)`` blocks, ``m.cast`` and ``m.future`` do not."""

    __slots__ = ("_bus", "_method", "_opts", "_plain", "_service")

    def __init__(self, bus: Bus, service: str, method: str, opts: CallOptions) -> None:
        self._bus, self._service, self._method, self._opts = bus, service, method, opts
        # no headers to copy and no not_before to compute for each call
        self._plain = not opts.headers and opts.at is None and not opts.delay

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the method and block until its result (or raise its error)."""
        opts, bus = self._opts, self._bus
        if self._plain:
            return bus.portal.run(bus.core.call(self._service, self._method, args, kwargs,
                                                timeout=opts.timeout, priority=opts.priority))
        return bus.portal.run(bus.core.call(
            self._service, self._method, args, kwargs, timeout=opts.timeout, headers=dict(opts.headers),
            not_before=opts.not_before(), priority=opts.priority))

    def cast(self, *args: Any, **kwargs: Any) -> str | None:
        """Fire and forget (queued in the outbox); the message id, or None if dropped."""
        opts = self._opts
        return self._bus.core.cast(self._service, self._method, args, kwargs,
                                   headers=dict(opts.headers), not_before=opts.not_before(),
                                   priority=opts.priority)

    def future(self, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Start the call; a :class:`concurrent.futures.Future` of its result (``cancel()``
        on it cancels the handler on the node)."""
        opts = self._opts
        return self._bus.portal.submit(self._bus.core.call(
            self._service, self._method, args, kwargs, timeout=opts.timeout, headers=dict(opts.headers),
            not_before=opts.not_before(), priority=opts.priority))

    def stream(self, *args: Any, **kwargs: Any) -> SyncStream:
        """Call a streaming method: an iterator over its items (``for``); ``close()`` it, or
        leave the loop, to cancel the rest on the node."""
        opts = self._opts
        core, nb = self._bus.core, opts.not_before()
        return SyncStream(self._bus.portal, lambda: core.stream(
            self._service, self._method, args, kwargs, timeout=opts.timeout,
            headers=dict(opts.headers), not_before=nb, priority=opts.priority))

    def options(self, **options: Any) -> Method:
        """This method bound with per-call options: ``timeout``, ``idempotency_key``,
        ``headers``, ``delay``, ``at``, ``priority`` (see :mod:`vertebra.dispatch.options`)."""
        return Method(self._bus, self._service, self._method, self._opts.bind(**options))

    def __repr__(self) -> str:
        return f"<remote method {self._service}.{self._method}>"


class Proxy:
    """Stands for a remote service; attribute access gives :class:`Method` objects."""

    def __init__(self, bus: Bus, service: str, timeout: float) -> None:
        self._bus, self._service, self._opts = bus, service, CallOptions(timeout)

    def __getattr__(self, name: str) -> Method:
        if name.startswith("__"):
            raise AttributeError(name)
        return Method(self._bus, self._service, name, self._opts)

    def __getitem__(self, name: str) -> Method:
        return Method(self._bus, self._service, name, self._opts)

    def __repr__(self) -> str:
        return f"<proxy {self._service} via {self._bus.core.url}>"


class Bus:
    """The sync face of an :class:`AsyncBus`; made by :func:`vertebra.connect`."""

    def __init__(self, url: str | None = None, *more_urls: str, **options: Any) -> None:
        self.portal = Portal()
        try:
            self.core = AsyncBus(url, *more_urls, **options)
            self.portal.run(self.core.start())
        except BaseException:
            self.portal.stop()
            raise
        with _open_lock:
            _open_buses.add(self)
        _exit_on_sigterm()

    def proxy(self, service: str, timeout: float | None = None) -> Proxy:
        """A proxy whose attributes call the methods of ``service``."""
        return Proxy(self, service, self.core.timeout if timeout is None else timeout)

    def call(self, service: str, method: str, *args: Any, timeout: float | None = None,
             **kwargs: Any) -> Any:
        """Call ``service.method(*args, **kwargs)`` and wait for the result."""
        return self.portal.run(self.core.call(service, method, args, kwargs, timeout=timeout))

    def publish(self, topic: str, payload: Any = None) -> str | None:
        """Queue an event; never blocks on the network."""
        return self.core.publish(topic, payload)

    def cancel(self, service: str, message_id: str) -> str | None:
        """Ask the replicas of ``service`` to cancel the call, cast or task ``message_id``
        (a running handler is cancelled; one not started yet never starts); never blocks."""
        return self.core.cancel(service, message_id)

    def serve(self, *nodes: Servable) -> None:
        """Serve ``nodes`` on this bus's loop thread; returns once they are announced."""
        self.portal.run(self.core.serve(*nodes))

    def subscribe(self, pattern: str, callback: EventCallback) -> None:
        """Call ``callback(topic, payload)`` on the loop thread for each matching event."""
        self.portal.run(self.core.subscribe(pattern, callback))

    def nodes(self) -> list[ServiceInfo]:
        """The live services, with their methods, signatures and docstrings."""
        return self.portal.run(self.core.nodes())

    def flush(self, timeout: float | None = None) -> int:
        """Wait until the outbox is sent (or ``timeout``); how many are left."""
        return self.portal.run(self.core.flush(timeout))

    def dead_letters(self, service: str) -> list[DeadLetter]:
        """The tasks of ``service`` that exhausted their attempts, oldest first."""
        return self.portal.run(self.core.dead_letters(service))

    def replay(self, service: str, ids: list[str] | None = None) -> int:
        """Send dead letters of ``service`` (those with ``ids``; all when None) back to its
        queue as first attempts; how many were sent."""
        return self.portal.run(self.core.replay(service, ids))

    def stats(self) -> dict[str, Any]:
        """Counters of the outbox, calls and transport."""
        return self.core.stats()

    def close(self, linger: float | None = None) -> None:
        """Drain, flush within ``linger``, disconnect and stop the loop thread (idempotent)."""
        with _open_lock:
            _open_buses.discard(self)
        if self.core.forked():
            return       # the parent's to close: its thread and sockets are not in this process
        if self.portal.loop.is_running():
            self.portal.run(self.core.close(linger))
        self.portal.stop()

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _exit_on_sigterm() -> None:
    """Make SIGTERM a normal exit (so atexit flushes every bus), unless the program has
    its own SIGTERM handler: then it is the program's business, and we leave it alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@atexit.register
def _close_open_buses() -> None:
    """Flush every bus still open at interpreter exit, within its linger time."""
    with _open_lock:
        buses = list(_open_buses)
    for bus in buses:
        try:
            bus.close()
        except Exception:
            logging.getLogger("vertebra.bus").exception("closing a bus at exit failed")
