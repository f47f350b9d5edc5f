"""Proxies: ``bus.proxy("calc").add(2, 3)``, ``.cast(...)``, ``.future(...)``, ``.stream(...)``,
``.options(...)``."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from .options import CallOptions

if TYPE_CHECKING:
    from .bus import AsyncBus
    from .streams import AsyncStream

__all__ = ["AsyncMethod", "AsyncProxy"]


class AsyncMethod:
    """One remote method, for async code: ``await m(...)``, ``m.cast(...)``, ``m.future(...)``."""

    __slots__ = ("_bus", "_method", "_opts", "_plain", "_service")

    def __init__(self, bus: AsyncBus, service: str, method: str, opts: CallOptions) -> None:
        self._bus, self._service, self._method, self._opts = bus, service, method, opts
        # no headers to copy and no not_before to compute for each call
        self._plain = not opts.headers and opts.at is None and not opts.delay

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Call the method: await this for its result (or its error)."""
        opts = self._opts
        if self._plain:
            return self._bus.call(self._service, self._method, args, kwargs, timeout=opts.timeout,
                                  priority=opts.priority)
        return self._bus.call(self._service, self._method, args, kwargs, timeout=opts.timeout,
                              headers=dict(opts.headers), not_before=opts.not_before(),
                              priority=opts.priority)

    def cast(self, *args: Any, **kwargs: Any) -> str | None:
        """Fire and forget (queued in the outbox); the message id, or None if dropped."""
        opts = self._opts
        return self._bus.cast(self._service, self._method, args, kwargs, headers=dict(opts.headers),
                              not_before=opts.not_before(), priority=opts.priority)

    def future(self, *args: Any, **kwargs: Any) -> asyncio.Task[Any]:
        """Start the call now; await the returned task later (cancelling it cancels the
        handler on the node)."""
        return asyncio.ensure_future(self(*args, **kwargs))

    def stream(self, *args: Any, **kwargs: Any) -> AsyncStream:
        """Call a streaming method: an async iterator over its items (``async for``)."""
        opts = self._opts
        return self._bus.stream(self._service, self._method, args, kwargs, timeout=opts.timeout,
                                headers=dict(opts.headers), not_before=opts.not_before(),
                                priority=opts.priority)

    def options(self, **options: Any) -> AsyncMethod:
        """This method bound with per-call options: ``timeout``, ``idempotency_key``,
        ``headers``, ``delay``, ``at``, ``priority`` (see :mod:`vertebra.dispatch.options`)."""
        return AsyncMethod(self._bus, self._service, self._method, self._opts.bind(**options))

    def __repr__(self) -> str:
        return f"<remote method {self._service}.{self._method}>"


class AsyncProxy:
    """Stands for a remote service; attribute access gives :class:`AsyncMethod` objects."""

    def __init__(self, bus: AsyncBus, service: str, timeout: float) -> None:
        self._bus, self._service, self._opts = bus, service, CallOptions(timeout)

    def __getattr__(self, name: str) -> AsyncMethod:
        if name.startswith("__"):
            raise AttributeError(name)
        return AsyncMethod(self._bus, self._service, name, self._opts)

    def __getitem__(self, name: str) -> AsyncMethod:
        return AsyncMethod(self._bus, self._service, name, self._opts)

    def __repr__(self) -> str:
        return f"<proxy {self._service} via {self._bus.url}>"
