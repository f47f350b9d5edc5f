"""The sync API: a thin facade that runs an :class:`AsyncBus` on a portal thread.

Every method is safe to call from many threads at once.  ``cast`` and ``publish`` go
straight into the thread-safe outbox and never wait for the loop.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import signal
import threading
import weakref
from types import TracebackType
from typing import Any

from ..wire.info import ServiceInfo
from .bus import AsyncBus, EventCallback
from .portal import Portal
from .service import Servable

__all__ = ["Bus", "Method", "Proxy"]

_open_buses: weakref.WeakSet[Bus] = weakref.WeakSet()
_open_lock = threading.Lock()


class Method:
    """One remote method, for sync code: ``m(...)`` blocks, ``m.cast`` and ``m.future`` do not."""

    __slots__ = ("_bus", "_method", "_service", "_timeout")

    def __init__(self, bus: Bus, service: str, method: str, timeout: float) -> None:
        self._bus, self._service, self._method, self._timeout = bus, service, method, timeout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the method and block until its result (or raise its error)."""
        return self._bus.portal.run(
            self._bus.core.call(self._service, self._method, args, kwargs, timeout=self._timeout))

    def cast(self, *args: Any, **kwargs: Any) -> str | None:
        """Fire and forget (queued in the outbox); the message id, or None if dropped."""
        return self._bus.core.cast(self._service, self._method, args, kwargs)

    def future(self, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Start the call; a :class:`concurrent.futures.Future` of its result."""
        return self._bus.portal.submit(
            self._bus.core.call(self._service, self._method, args, kwargs, timeout=self._timeout))

    def __repr__(self) -> str:
        return f"<remote method {self._service}.{self._method}>"


class Proxy:
    """Stands for a remote service; attribute access gives :class:`Method` objects."""

    def __init__(self, bus: Bus, service: str, timeout: float) -> None:
        self._bus, self._service, self._timeout = bus, service, timeout

    def __getattr__(self, name: str) -> Method:
        if name.startswith("__"):
            raise AttributeError(name)
        return Method(self._bus, self._service, name, self._timeout)

    def __getitem__(self, name: str) -> Method:
        return Method(self._bus, self._service, name, self._timeout)

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

    def stats(self) -> dict[str, Any]:
        """Counters of the outbox, calls and transport."""
        return self.core.stats()

    def close(self, linger: float | None = None) -> None:
        """Drain, flush within ``linger``, disconnect and stop the loop thread (idempotent)."""
        with _open_lock:
            _open_buses.discard(self)
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
