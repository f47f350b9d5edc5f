"""The Bus: one async core over one transport.

It owns what every transport shares: calls and their pending-reply table, deadlines, the
outbox behind casts, tasks and events, serving nodes, subscriptions and discovery.  The
sync API (:mod:`vertebra.dispatch.sync`) is a thin facade that runs this on a loop thread.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from ..backoff import Backoff
from ..transports import open_transport
from ..transports.base import Transport
from ..wire.codec import get_codec
from ..wire.control import cancel_payload, control_topic
from ..wire.deadletter import DeadLetter
from ..wire.envelope import Envelope, new_id
from ..wire.errors import Unreachable, VertebraError
from ..wire.info import ServiceInfo
from ..wire.topics import matches, validate_pattern, validate_topic
from . import forks
from .multi import MultiTransport
from .outbox import Outbox, OverflowPolicy
from .pending import Deadlines, PendingCalls
from .proxy import AsyncProxy
from .service import Servable, ServiceRuntime
from .spool import Spool
from .streams import AsyncStream
from .tracing import producer_span, tracing
from .url import default_url

__all__ = ["AsyncBus"]

log = logging.getLogger("vertebra.bus")

EventCallback = Callable[[str, Any], Any]


class AsyncBus:
    """A connection to a vertebra network through one transport.

    Use as ``async with AsyncBus(url) as bus``; see :func:`vertebra.connect_async`.

    Several URLs make one bus over several transports (see
    :mod:`vertebra.dispatch.multi`). Options: ``codec`` ("json" or "msgpack"),
    ``timeout`` (default seconds per call), ``outbox_size``, ``overflow``
    ("drop_oldest", "drop_newest", "block"), ``block_timeout``, ``linger`` (seconds to
    flush on close), ``max_age`` (seconds before an unsendable message is given up),
    ``send_window`` (sends in flight), ``spool`` (a file: accepted sends survive a crash;
    see :mod:`vertebra.dispatch.spool`), ``stream_window`` (items a node may send ahead
    of a stream's consumer; see :mod:`vertebra.dispatch.streams`).
    """

    def __init__(
        self,
        url: str | None = None,
        *more_urls: str,
        codec: str = "json",
        timeout: float = 30.0,
        outbox_size: int = 10_000,
        overflow: OverflowPolicy = "drop_oldest",
        block_timeout: float = 1.0,
        linger: float = 5.0,
        max_age: float = 300.0,
        send_window: int = 64,
        spool: str | None = None,
        stream_window: int = 32,
    ) -> None:
        self.url = url = url or default_url()
        self.urls = (url, *more_urls)
        self.codec = get_codec(codec)
        self.timeout = timeout
        self.linger = linger
        if stream_window < 1:
            raise ValueError("stream_window must be at least 1")
        self.stream_window = stream_window
        self.transport: Transport = open_transport(url, self.codec) if not more_urls else \
            MultiTransport([open_transport(u, self.codec) for u in self.urls], self.codec)
        self.outbox = Outbox(self.transport.send, maxsize=outbox_size, policy=overflow,
                             block_timeout=block_timeout, window=send_window, max_age=max_age,
                             spool=Spool(spool) if spool else None,
                             hold_delayed=not self.transport.capabilities.holds_delayed)
        self._pending = PendingCalls()
        self._pending.recancel = self.cancel
        self._deadlines: Deadlines | None = None
        self._runtimes: list[ServiceRuntime] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False
        self._backoff = Backoff(base=0.02, cap=1.0)
        self._generation = forks.generation()

    def forked(self) -> bool:
        """Whether this bus was opened in a parent process, before a fork."""
        return self._generation != forks.generation()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> AsyncBus:
        """Connect the transport and start the outbox; returns self."""
        if self._started:
            return self
        self._loop = asyncio.get_running_loop()
        await self.transport.connect(self._pending.resolve)
        self.outbox.restore()
        self.outbox.start()
        self._started = True
        return self

    async def close(self, linger: float | None = None) -> None:
        """Flush the outbox and drain served nodes, each within ``linger`` seconds; disconnect."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        linger = self.linger if linger is None else linger
        left = await self.outbox.flush(linger)     # first, so that casts to our own nodes land
        await self.stop_serving(timeout=linger)
        if left:
            log.warning("closing %s: %d queued message(s) not sent within linger %.1fs",
                        self.url, left, linger)
        held = await self.outbox.stop()
        if held:
            if self.outbox.spool is not None:
                log.info("closing %s: %d delayed message(s) not yet due, kept in the spool %s "
                         "for the next start", self.url, held, self.outbox.spool.path)
            else:
                log.warning("closing %s: %d delayed message(s) not yet due were lost (no spool=)",
                            self.url, held)
        await self.transport.close()
        if self.outbox.spool is not None:
            self.outbox.spool.close()

    def __del__(self) -> None:
        if getattr(self, "_started", False) and not self._closed and not self.forked():
            left = len(self.outbox)
            warnings.warn(f"unclosed bus {self.url}: {left} queued message(s) never sent; close it "
                          "(async with vertebra.connect_async(...)) to flush them", ResourceWarning,
                          source=self, stacklevel=1)
            if left:
                log.warning("bus %s collected unclosed: %d queued message(s) never sent", self.url, left)

    async def __aenter__(self) -> AsyncBus:
        return await self.start()

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- calling ----------------------------------------------------------------------------

    def proxy(self, service: str, timeout: float | None = None) -> AsyncProxy:
        """A proxy whose attributes call the methods of ``service``."""
        return AsyncProxy(self, service, self.timeout if timeout is None else timeout)

    async def call(self, service: str, method: str, args: tuple[Any, ...] | list[Any] = (),
                   kwargs: dict[str, Any] | None = None, *, timeout: float | None = None,
                   headers: dict[str, str] | None = None, not_before: float | None = None,
                   priority: int | None = None) -> Any:
        """Call ``service.method(*args, **kwargs)`` and return its result.

        Raises RemoteError, CallTimeout (after ``timeout`` seconds), Unreachable.  Run no
        earlier than ``not_before`` (epoch seconds; the timeout counts from then).  A call
        cancelled while its answer is awaited tells the node to cancel its handler.
        """
        if self._generation != forks.generation():
            forks.check_not_forked(self._generation)
        if timeout is None:
            timeout = self.timeout
        env = self._call_envelope(service, method, args, kwargs, timeout, headers, not_before, priority)
        loop = asyncio.get_running_loop()
        fut = self._pending.add(env.id, loop)
        wait = timeout if env.not_before is None else env.not_before - time.time() + timeout
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:
            deadlines = self._deadlines = Deadlines(loop)
        deadlines.add(loop.time() + wait, fut, service, method, timeout)
        sent = False
        try:
            if tracing():        # the client span lasts until the answer
                with producer_span(env, self.transport.scheme):
                    await self._send_call(env)
                    sent = True
                    return await fut
            await self._send_call(env)
            sent = True
            return await fut
        except asyncio.CancelledError:
            if sent and (not fut.done() or fut.cancelled()):   # awaiting it cancelled it
                self.cancel(service, env.id)     # the node stops the handler, if it still runs
            raise
        finally:
            if not fut.done():
                fut.cancel()        # ended unanswered (the send failed): no timeout for it
            deadlines.finished()
            self._pending.discard(env.id)

    def _call_envelope(self, service: str, method: str, args: tuple[Any, ...] | list[Any],
                       kwargs: dict[str, Any] | None, timeout: float, headers: dict[str, str] | None,
                       not_before: float | None, priority: int | None) -> Envelope:
        start = time.time()
        if not_before is not None and not_before > start:
            start = not_before
        else:
            not_before = None
        # positionally (see Envelope's fields): the hot path's one envelope
        return Envelope("call", new_id(), service, method, "", list(args), kwargs or {}, None,
                        None, None, "", "", start + timeout, headers or {}, None, not_before,
                        priority)

    async def _send_call(self, env: Envelope) -> None:
        """Send a call, holding it here until its ``not_before`` where the transport does not."""
        if env.not_before is not None and not self.transport.capabilities.holds_delayed:
            left = env.not_before - time.time()
            if left > 0:
                await asyncio.sleep(left)
        assert env.deadline is not None
        await self._send_until(env, env.deadline)

    async def _send_until(self, env: Envelope, deadline: float) -> None:
        """Send, retrying with backoff while the transport is down, until ``deadline``."""
        attempt = 0
        while True:
            try:
                await self.transport.send(env)
                return
            except (ConnectionError, OSError) as exc:
                if isinstance(exc, VertebraError):
                    raise
                delay = self._backoff.delay(attempt)
                attempt += 1
                if time.time() + delay >= deadline:
                    raise Unreachable(f"{env.service}: transport down ({exc})") from exc
                await asyncio.sleep(delay)

    def stream(self, service: str, method: str, args: tuple[Any, ...] | list[Any] = (),
               kwargs: dict[str, Any] | None = None, *, timeout: float | None = None,
               headers: dict[str, str] | None = None, not_before: float | None = None,
               priority: int | None = None, window: int | None = None) -> AsyncStream:
        """Call ``service.method`` and iterate over the items it streams (``async for``);
        ``timeout`` bounds the whole stream.  See :mod:`vertebra.dispatch.streams`."""
        if self._generation != forks.generation():
            forks.check_not_forked(self._generation)
        timeout = self.timeout if timeout is None else timeout
        env = self._call_envelope(service, method, args, kwargs, timeout, dict(headers or {}),
                                  not_before, priority)
        return AsyncStream(self, env, self.stream_window if window is None else window)

    def cancel(self, service: str, message_id: str) -> str | None:
        """Ask the replicas of ``service`` to cancel the call, cast or task ``message_id``:
        a running handler is cancelled, one not started yet never starts (for the node's
        ``revoke_window``).  Queued like an event; any thread; the control event's id."""
        return self.publish(control_topic(service), cancel_payload(message_id))

    def cast(self, service: str, method: str, args: tuple[Any, ...] | list[Any] = (),
             kwargs: dict[str, Any] | None = None, *, kind: str = "cast",
             headers: dict[str, str] | None = None, not_before: float | None = None,
             priority: int | None = None) -> str | None:
        """Queue a fire-and-forget call; returns the message id, None if dropped.

        Never blocks on the network (see the outbox's overflow policy); any thread.  It
        runs no earlier than ``not_before`` (epoch seconds), held by the broker where the
        transport can, else by the outbox (and its spool).
        """
        env = Envelope(kind, service=service, method=method, args=list(args),
                       kwargs=kwargs or {}, headers=headers or {}, not_before=not_before,
                       priority=priority)
        return self._enqueue(env)

    def _enqueue(self, env: Envelope) -> str | None:
        if self._generation != forks.generation():
            forks.check_not_forked(self._generation)
        with producer_span(env, self.transport.scheme):     # a shared no-op when tracing is off
            return env.id if self.outbox.put(env) else None

    def publish(self, topic: str, payload: Any = None, *,
                headers: dict[str, str] | None = None) -> str | None:
        """Queue an event for every subscriber of a matching pattern; any thread."""
        env = Envelope("event", topic=validate_topic(topic), payload=payload, headers=headers or {})
        return self._enqueue(env)

    async def flush(self, timeout: float | None = None) -> int:
        """Wait until everything due in the outbox is sent (or ``timeout``); return how many
        due messages are left (delayed ones not yet due are not waited for)."""
        return await self.outbox.flush(self.linger if timeout is None else timeout)

    # -- serving ----------------------------------------------------------------------------

    async def serve(self, *nodes: Servable) -> None:
        """Serve ``nodes`` on this bus; returns once each is listening and announced."""
        for node in nodes:
            if not isinstance(node, Servable):
                raise TypeError(f"cannot serve {node!r}: not a vertebra Node")
            rt = node.__vertebra_runtime__(self)
            for pattern in rt.patterns:
                await self.transport.subscribe(validate_pattern(pattern),
                                               self._event_route(rt, pattern))
            await self.transport.serve(rt.info, rt.handle, prefetch=rt.prefetch)
            self._runtimes.append(rt)
            await rt.started()
            log.info("serving %s on %s", rt.info.name, self.url)

    @staticmethod
    def _event_route(rt: ServiceRuntime, pattern: str) -> Callable[[Envelope], Awaitable[None]]:
        async def route(env: Envelope) -> None:
            if matches(pattern, env.topic):
                await rt.handle_event(pattern, env)
        return route

    async def stop_serving(self, timeout: float | None = None) -> int:
        """Gracefully stop every served node: no new work, in-flight work finishes.

        Returns how many handlers were still running when ``timeout`` ran out.
        """
        timeout = self.linger if timeout is None else timeout
        runtimes, self._runtimes = self._runtimes, []
        for rt in runtimes:
            await self.transport.unserve(rt.info.name)
        left = 0
        for rt in runtimes:
            left += await rt.drain(timeout)
        return left

    async def subscribe(self, pattern: str, callback: EventCallback) -> None:
        """Call ``callback(topic, payload)`` (sync or async) for each matching event."""
        validate_pattern(pattern)
        is_async = inspect.iscoroutinefunction(callback)

        async def route(env: Envelope) -> None:
            if not matches(pattern, env.topic):
                return
            try:
                if is_async:
                    await callback(env.topic, env.payload)
                else:
                    callback(env.topic, env.payload)
            except Exception:
                log.exception("event callback for %r failed on %s", pattern, env.topic)

        await self.transport.subscribe(pattern, route)

    # -- discovery and stats ----------------------------------------------------------------

    @property
    def runtimes(self) -> tuple[ServiceRuntime, ...]:
        """The services this bus serves now."""
        return tuple(self._runtimes)

    async def nodes(self) -> list[ServiceInfo]:
        """The live services, with their methods, signatures and docstrings."""
        return sorted(await self.transport.discover(), key=lambda s: s.name)

    async def dead_letters(self, service: str) -> list[DeadLetter]:
        """The tasks of ``service`` that exhausted their attempts, oldest first; each has
        ``.id .service .method .args .kwargs .error .attempts``."""
        return await self.transport.dead_letters(service)

    async def replay(self, service: str, ids: list[str] | None = None) -> int:
        """Send dead letters of ``service`` (those with ``ids``; all when None) back to its
        queue as first attempts; how many were sent."""
        return await self.transport.replay(service, None if ids is None else list(ids))

    def stats(self) -> dict[str, Any]:
        """Counters: the outbox's, pending calls, the transport's."""
        return {"outbox": dict(self.outbox.counts, queued=len(self.outbox), held=self.outbox.held),
                "pending_calls": len(self._pending), "late_replies": self._pending.late,
                "transport": dict(self.transport.stats)}
