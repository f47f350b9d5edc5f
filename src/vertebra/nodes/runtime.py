"""Serving one Node on one Bus: dispatch, arguments, deadlines, concurrency, drain.

Sync handlers run in the node's own bounded thread pool and never block the event loop;
async handlers run on the loop.  ``concurrency`` bounds handlers running at once (calls,
casts, tasks, streams and events together) and is the transport's prefetch.  Work whose
deadline has passed is answered with a timeout error and never started; a message that
comes before its ``not_before`` waits (unacked, outside the concurrency bound) until due.
A handler that raises is answered with a RemoteError (calls), logged (casts, events) or
handed back to the queue for another attempt (tasks, by the one policy of
:mod:`vertebra.nodes.retry`); the node keeps serving in every case.

Every replica also listens on ``_vertebra.control.<service>`` (:mod:`vertebra.wire.control`):
a cancel stops a run (an async handler gets CancelledError, a sync one sees
``vertebra.current().cancelled``; see :mod:`.context`) or keeps the message from ever
starting, and a credit lets a stream (:mod:`.streaming`) send more.  A deadline that passes
while an async handler or a stream runs stops it the same way.  A stopped call is answered
with an error of code "cancelled" (or "timeout"); a stopped cast or task is acked: it is
neither tried again nor buried.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import dataclasses
import functools
import inspect
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import AsyncGeneratorType, GeneratorType
from typing import TYPE_CHECKING, Any, Final

from ..backoff import Backoff
from ..dispatch.logfields import fields
from ..dispatch.slip import SLIP_HEADER
from ..dispatch.tracing import consumer_span
from ..eager import start_eagerly
from ..transports.base import Incoming
from ..wire.control import control_topic
from ..wire.deadletter import attempt_of, with_attempt
from ..wire.envelope import STREAM_HEADER, Envelope
from ..wire.errors import ProtocolError, error_to_wire, wire_error
from ..wire.info import ServiceInfo
from .binding import Binder, method_info
from .context import CANCELLED, DRAIN, TIMEOUT, CallContext, Interrupted, set_current
from .control import Cancel, Revoked, parse_control
from .decorators import ENTRYPOINT_ATTR, Entrypoint
from .dedup import Dedup
from .pool import ElasticPool
from .retry import RetryPolicy
from .schedule import Schedule, Scheduler
from .slips import forward_slip, slip_failed
from .stats import MethodStats
from .streaming import ItemRefused, final, pump, window_of

if TYPE_CHECKING:
    from ..dispatch.bus import AsyncBus
    from .node import Node

__all__ = ["STATS_METHOD", "NodeRuntime"]

log = logging.getLogger("vertebra.node")

STATS_METHOD = "_vertebra_stats"
"""The built-in method every node answers with its statistics (see :meth:`NodeRuntime.stats`)."""


_GENERATORS: Final = (GeneratorType, AsyncGeneratorType)


@dataclass(slots=True)
class _Handler:
    name: str
    entry: Entrypoint
    func: Callable[..., Any]
    is_async: bool          # a coroutine function: runs on the loop
    binder: Binder
    is_gen: bool = False    # a generator function: its next() runs in the pool
    is_agen: bool = False   # an async generator function: runs on the loop

    @property
    def on_loop(self) -> bool:
        """Whether the handler runs on the event loop (so a stop can cancel it)."""
        return self.is_async or self.is_agen


class _Running(set[asyncio.Task[None]]):
    """The tasks of messages being handled.  ``start_eagerly`` adds a message's task only
    once the message waits; :meth:`NodeRuntime.handle` names the context of the message it
    starts in ``starting``, and ``add`` hands that context its task (to cancel it)."""

    starting: CallContext | None = None

    def add(self, task: asyncio.Task[None]) -> None:
        super().add(task)
        call = self.starting
        if call is not None:
            self.starting = None
            call._started_task(task)


class _Slots:
    """The node's concurrency bound: a FIFO semaphore whose uncontended take is a plain
    method call (:meth:`take`), not a coroutine.  A released slot goes straight to the
    longest waiter, if any; so while anyone waits no slot is free."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take(self) -> bool:
        """Take a slot if one is free now (True), without waiting."""
        if self._free > 0:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting (in line) for one if none is free."""
        if self._free > 0:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.cancelled():
                self._waiters.remove(fut)
            else:
                self.release()              # it was handed a slot as it was cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a slot back: to the longest waiter, else to the free ones."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _in_thread(call: CallContext | None, func: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any], collect: bool) -> Any:
    """Run a sync handler on a pool thread (not at all if it was stopped while queued);
    a generator it returns is run to its end when ``collect``."""
    if call is not None and call._why is not None:
        return None
    result = func(*args, **kwargs)
    if collect and type(result) is GeneratorType:
        return list(result)
    return result


def _settle(fut: asyncio.Future[Any], work: concurrent.futures.Future[Any]) -> None:
    """Hand the outcome of pool work to the loop's future waiting for it."""
    if fut.done():
        return
    if work.cancelled():
        fut.cancel()
        return
    exc = work.exception()
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(work.result())


def _cancel_work(work: concurrent.futures.Future[Any], fut: asyncio.Future[Any]) -> None:
    if fut.cancelled():
        work.cancel()


def _when(entry: Entrypoint) -> str:
    return f"every {entry.every:g}s" if entry.every else f"cron {entry.cron}" if entry.cron else ""


class NodeRuntime:
    """The ServiceRuntime of one Node instance on one bus."""

    def __init__(self, node: Node, bus: AsyncBus) -> None:
        self.node = node
        self.bus = bus
        cls = type(node)
        self.handlers: dict[str, _Handler] = {}
        self.events: dict[str, list[_Handler]] = {}
        self.scheduled: dict[str, _Handler] = {}
        for attr in dir(cls):
            entry = getattr(getattr(cls, attr, None), ENTRYPOINT_ATTR, None)
            if not isinstance(entry, Entrypoint):
                continue
            func = getattr(node, attr)
            h = _Handler(attr, entry, func, inspect.iscoroutinefunction(func), Binder(func),
                         inspect.isgeneratorfunction(func), inspect.isasyncgenfunction(func))
            if entry.kind == "event":
                self.events.setdefault(entry.pattern, []).append(h)
            elif entry.kind == "schedule":
                self.scheduled[attr] = h
            else:
                self.handlers[attr] = h
        self.control_topic = control_topic(cls.name)
        self.patterns = (*self.events, self.control_topic)
        self.prefetch = max(1, cls.concurrency)
        everything = [*self.handlers.values(), *self.scheduled.values(),
                      *(x for hs in self.events.values() for x in hs)]
        methods = tuple(
            method_info(h.binder, h.name, h.entry.kind, inspect.getdoc(h.func) or "",
                        h.entry.pattern or _when(h.entry))
            for h in sorted(everything, key=lambda h: h.name))
        own_doc = cls.__dict__.get("__doc__")   # never a base class's (Node's own) docstring
        self.info = ServiceInfo(cls.name, methods, inspect.cleandoc(own_doc) if own_doc else "", 1,
                                bus.transport.scheme)
        self._slots = _Slots(self.prefetch)
        max_workers = cls.max_workers or self.prefetch
        self.pool = ElasticPool(min(cls.min_workers, max_workers), max_workers, cls.idle_timeout,
                                name=f"vertebra-{cls.name}")
        self.dedup = Dedup(cls.dedup_window)
        self.revoked = Revoked(cls.revoke_window)
        self._running = _Running()
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._calls: dict[str, CallContext] = {}       # message id -> its run, until it ends
        self._delayed: set[CallContext] = set()        # runs waiting for their not_before
        self._draining = False
        self.counts = {"calls": 0, "errors": 0, "expired": 0, "events": 0, "duplicates": 0,
                       "retried": 0, "buried": 0, "cancelled": 0}
        self.retry_policies = {
            name: RetryPolicy(h.entry.max_attempts or cls.max_attempts, Backoff(cls.retry_delay, 5.0))
            for name, h in self.handlers.items() if h.entry.kind == "task"}
        self.methods = {h.name: MethodStats() for h in everything}
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._builtins: dict[str, Callable[[], Any]] = {STATS_METHOD: self.stats}
        self.scheduler = Scheduler(
            cls.name, self.replica,
            {name: Schedule(h.entry.every, h.entry.cron) for name, h in self.scheduled.items()},
            self._fire, bus.publish) if self.scheduled else None
        if self.scheduler is not None:
            self.patterns = (*self.patterns, self.scheduler.topic)

    # -- calls, casts, tasks ----------------------------------------------------------------

    async def handle(self, incoming: Incoming) -> None:
        """Start one message's work (eagerly: see vertebra.eager) and return."""
        env = incoming.envelope
        call = CallContext(env, self.info.name, env.method)
        running = self._running
        outer, running.starting = running.starting, call    # handle() may be re-entered
        try:
            start_eagerly(self._run(incoming, call), running)
        finally:
            running.starting = outer

    async def _run(self, incoming: Incoming, call: CallContext) -> None:
        # One coroutine for the whole way of a message (each extra level costs every call);
        # the rare stretches (not_before, streams, stops) are methods of their own.
        env = incoming.envelope
        is_call = env.kind == "call"
        h = self.handlers.get(env.method)
        calls = self._calls
        try:
            if h is None and env.method in self._builtins:
                if is_call:
                    await incoming.reply(env.answer(self._builtins[env.method]()))
                await incoming.ack()
                return
            if h is None:
                log.warning("%s: no method %r (from %s)", self.info.name, env.method, env.kind,
                            extra=fields(env))
                error = wire_error("unreachable", "Unreachable",
                                   f"service {self.info.name!r} has no method {env.method!r}")
                if is_call:
                    await incoming.reply(env.fail(error))
                await incoming.reject(False, error)
                return
            if self.revoked.ids and env.id in self.revoked:
                call._why = CANCELLED               # cancelled before it came: never started
                await self._stopped(incoming, call)
                return
            calls[env.id] = call                    # from here on a cancel finds it
            if env.not_before is not None and env.not_before > time.time() \
                    and not await self._wait_due(incoming, call):
                return
            if self.dedup.enabled:
                seen, answer = self.dedup.check(env)
                if seen:
                    self.counts["duplicates"] += 1
                    log.info("%s: dropped duplicate %s %s", self.info.name, env.kind, env.id,
                             extra=fields(env))
                    if is_call and answer is not None:
                        # the first run's answer, addressed to this call (its id may differ
                        # when only the idempotency key is shared)
                        await incoming.reply(dataclasses.replace(answer, re=env.id, reply_to=env.reply_to))
                    await incoming.ack()
                    return
            slots = self._slots
            if not slots.take():                    # none free: wait in line for one
                call._armed = True                  # a stop ends the wait for a slot
                try:
                    await slots.acquire()
                except asyncio.CancelledError:
                    if not call._absorb():
                        raise
                    call._armed = False
                    await self._stopped(incoming, call)
                    return
                call._armed = False
            try:
                if call._why is not None:
                    await self._stopped(incoming, call)
                    return
                if env.expired():
                    self.counts["expired"] += 1
                    if is_call:
                        await incoming.reply(final(env.fail(wire_error(
                            "timeout", "CallTimeout",
                            f"{self.info.name}.{env.method}: deadline passed before it started")), call))
                    await incoming.ack()
                    return
                window = None
                if is_call and STREAM_HEADER in env.headers:
                    try:
                        window = window_of(env)
                    except ProtocolError as exc:
                        await incoming.reply(final(env.fail(wire_error("protocol", "ProtocolError",
                                                                       str(exc))), call))
                        await incoming.ack()
                        return
                self.counts["calls"] += 1
                stats = self.methods[h.name]
                stats.calls += 1
                stats.in_flight += 1
                started = time.perf_counter()
                set_current(call)
                interruptible = h.on_loop or window is not None
                if interruptible:                   # a stop (a cancel, the deadline) cancels it
                    if env.deadline is not None:
                        call._watch_deadline()
                    call._armed = True
                bound = False
                result: Any = None
                failure: Exception | None = None
                try:
                    with consumer_span(env, self.info.transport):   # a shared no-op when off
                        args, kwargs = h.binder.bind(env.args, env.kwargs)
                        bound = True
                        if window is not None:
                            result = await self._stream(incoming, h, call, args, kwargs, window)
                        elif h.is_async:            # _invoke's first case, one coroutine less
                            result = await h.func(*args, **kwargs)
                            if type(result) in _GENERATORS:
                                result = await self._collect(result)
                        else:
                            result = await self._invoke(h, args, kwargs, call)
                except asyncio.CancelledError:
                    if not call._absorb():
                        raise
                except Interrupted:
                    pass                            # the run was stopped: call._why says why
                except Exception as exc:
                    failure = exc
                finally:
                    call._armed = False
                    if call._requested:
                        call._disarm()              # the handler swallowed our cancel
                    if call._due:
                        call._unwatch_deadline()
                    stats.in_flight -= 1
                    stats.record(time.perf_counter() - started)
                if call._why is None and not interruptible and env.deadline is not None \
                        and (is_call or failure is not None) and env.expired():
                    call._why = TIMEOUT             # a sync handler finished, but too late
                if call._why is not None:
                    await self._stopped(incoming, call)
                    return
                if failure is not None:
                    self.counts["errors"] += 1
                    stats.errors += 1
                    if isinstance(failure, ItemRefused):
                        await incoming.reply(final(env.fail(wire_error(
                            "protocol", "ProtocolError", f"{self.info.name}.{env.method}: {failure}")), call))
                        await incoming.ack()
                    else:
                        await self._failed(incoming, h, failure, bad_arguments=not bound, call=call)
                    return
            finally:
                slots.release()
            if window is None and SLIP_HEADER in env.headers:
                forward_slip(self.bus, env, result, self.info.name)
            if is_call:
                answer = env.answer(result)
                if window is not None:
                    answer.seq = result             # the final reply of a stream: items sent
                try:
                    await incoming.reply(answer)
                except ProtocolError as exc:
                    answer = final(env.fail(wire_error("remote", "ProtocolError",
                                                       f"cannot send the result: {exc}")), call)
                    await incoming.reply(answer)
                if window is None:
                    self.dedup.remember(env, answer)
            await incoming.ack()
        except Exception:
            log.exception("%s: failed to answer %s %s", self.info.name, env.kind, env.id,
                          extra=fields(env))
        finally:
            if calls.get(env.id) is call:
                del calls[env.id]

    async def _wait_due(self, incoming: Incoming, call: CallContext) -> bool:
        """Hold a message that came before its ``not_before`` until it is due (unacked, with
        no concurrency slot); False when it was stopped meanwhile (and so settled)."""
        env = incoming.envelope
        assert env.not_before is not None
        if self._draining:
            await incoming.reject(True)
            return False
        self._delayed.add(call)
        call._armed = True
        try:
            await asyncio.sleep(env.not_before - time.time())
        except asyncio.CancelledError:
            if not call._absorb():
                raise
        finally:
            call._disarm()
            self._delayed.discard(call)
        if call._why is not None:
            await self._stopped(incoming, call)
            return False
        return True

    async def _stopped(self, incoming: Incoming, call: CallContext) -> None:
        """Settle a message whose run was stopped: cancelled, timed out, or (not due yet)
        drained; a call is answered with the error of why."""
        env = incoming.envelope
        why = call._why
        if why == DRAIN:
            await incoming.reject(True)
            return
        where = f"{self.info.name}.{env.method}"
        if why == CANCELLED:
            self.counts["cancelled"] += 1
            error = wire_error("cancelled", "Cancelled", f"{where}: cancelled")
        else:
            self.counts["expired"] += 1
            error = wire_error("timeout", "CallTimeout", f"{where}: deadline passed while it ran")
        log.info("%s %s %s: %s", where, env.kind, env.id, error["message"], extra=fields(env))
        if env.kind == "call":
            answer = final(env.fail({**error, "node": self.replica}), call)
            await incoming.reply(answer)
            if STREAM_HEADER not in env.headers:
                self.dedup.remember(env, answer)
        elif SLIP_HEADER in env.headers:
            slip_failed(self.bus, env, {**error, "node": self.replica}, retry=False)
        await incoming.ack()

    async def _invoke(self, h: _Handler, args: tuple[Any, ...], kwargs: dict[str, Any],
                      call: CallContext | None = None, collect: bool = True) -> Any:
        """Run a handler; a generator it returns is run to its end when ``collect`` (a list)."""
        if h.is_async:
            result = await h.func(*args, **kwargs)
        elif h.is_agen or (h.is_gen and not collect):
            result = h.func(*args, **kwargs)     # only makes the generator: no code runs yet
        else:
            ctx = contextvars.copy_context()
            return await self._in_pool(ctx.run, _in_thread, call, h.func, args, kwargs, collect)
        if collect and type(result) in _GENERATORS:
            result = await self._collect(result)
        return result

    def _in_pool(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` on a pool thread: ``loop.run_in_executor`` with one hop back to
        the loop and no future chained both ways (cancelling the returned future still
        keeps a queued ``fn`` from starting)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        work = self.pool.submit(fn, *args)

        def done(work: concurrent.futures.Future[Any]) -> None:   # on the pool thread
            try:
                loop.call_soon_threadsafe(_settle, fut, work)
            except RuntimeError:            # the loop was closed meanwhile: nobody waits
                pass

        work.add_done_callback(done)
        fut.add_done_callback(functools.partial(_cancel_work, work))
        return fut

    async def _collect(self, gen: Any) -> list[Any]:
        """All the items of a generator (a sync one runs in the pool) as a list."""
        if type(gen) is AsyncGeneratorType:
            return [x async for x in gen]
        ctx = contextvars.copy_context()
        items: list[Any] = await self._in_pool(ctx.run, list, gen)
        return items

    async def _stream(self, incoming: Incoming, h: _Handler, call: CallContext,
                      args: tuple[Any, ...], kwargs: dict[str, Any], window: int) -> int:
        """A streamed call: run the handler, then pump what it returned; items sent.  The
        stream beats from the start, while the handler itself runs too."""
        call._credit = max(call._credit, window)      # a credit may have come already

        async def run_handler() -> Any:
            if h.on_loop or h.is_gen:
                source = await self._invoke(h, args, kwargs, call, collect=False)
            else:
                call._armed = False       # a plain sync handler in the pool: not cancellable
                try:
                    source = await self._invoke(h, args, kwargs, call, collect=False)
                finally:
                    call._armed = True
            if call._why is not None:
                raise Interrupted
            return source

        return await pump(incoming, call, run_handler, self.pool)

    # -- control messages -------------------------------------------------------------------

    def cancel(self, message_id: str) -> bool:
        """Cancel the call, cast or task ``message_id`` here: a run stops, one that has not
        come yet never starts (for ``revoke_window`` seconds); whether it was running."""
        self.revoked.add(message_id)
        call = self._calls.get(message_id)
        if call is None:
            return False
        call._stop(CANCELLED)
        return True

    def _control(self, env: Envelope) -> None:
        msg = parse_control(env.payload)
        if msg is None:
            log.warning("%s: ignored a malformed control message %.200r", self.info.name,
                        env.payload, extra=fields(env))
        elif isinstance(msg, Cancel):
            if self.cancel(msg.id):
                log.info("%s: cancelling %s", self.info.name, msg.id)
        else:
            call = self._calls.get(msg.id)
            if call is not None and msg.upto > call._credit:
                call._credit = msg.upto
                wake = call._wake
                if wake is not None and not wake.done():
                    wake.set_result(None)

    async def _failed(self, incoming: Incoming, h: _Handler, exc: Exception,
                      bad_arguments: bool = False, call: CallContext | None = None) -> None:
        env = incoming.envelope
        tb = "".join(traceback.format_exception(exc)) if type(self.node).allow_tracebacks else ""
        error = {**error_to_wire(exc, tb), "node": self.replica}
        if bad_arguments:      # the arguments did not fit the signature: the handler never ran
            error["bad_arguments"] = True
        if env.kind == "call":
            self.dedup.forget(env)   # it did not complete: a retry with the same key must run
            answer = env.fail(error)
            await incoming.reply(answer if call is None else final(answer, call))
            await incoming.ack()
            return
        if SLIP_HEADER in env.headers:
            slip_failed(self.bus, env, error)   # the routing slip has its own retries and report
            await incoming.ack()
            return
        log.error("%s.%s (%s %s, attempt %d) raised %s: %s", self.info.name, h.name, env.kind,
                  env.id, attempt_of(env), type(exc).__name__, exc, extra=fields(env))
        if h.entry.kind != "task":
            await incoming.reject(False, error)          # a cast to an @rpc method: logged
            return
        self.dedup.forget(env)   # it did not complete: a retry or a replay must run, not be dropped
        policy = self.retry_policies[h.name]
        permanent = bad_arguments or isinstance(exc, TypeError)
        attempt = None if permanent else policy.next_attempt(env)
        if attempt is None:
            env.kind = "task"                            # a cast to a @task method is a task
            self.counts["buried"] += 1
            await incoming.reject(False, error)
            return
        await asyncio.sleep(policy.delay(env))
        try:
            await self.bus.transport.send(with_attempt(dataclasses.replace(env, kind="task"), attempt))
        except (ConnectionError, OSError) as send_exc:
            log.warning("%s: cannot re-send task %s (%s); it goes back to its queue",
                        self.info.name, env.id, send_exc, extra=fields(env))
            await incoming.reject(True)
            return
        self.counts["retried"] += 1
        await incoming.ack()

    # -- events -----------------------------------------------------------------------------

    async def handle_event(self, pattern: str, env: Envelope) -> None:
        """Run every handler subscribed with ``pattern`` for this event (or take a control
        message: those still come while draining)."""
        if pattern == self.control_topic:
            self._control(env)
            return
        if self._draining:
            return
        if self.scheduler is not None and pattern == self.scheduler.topic:
            self.scheduler.on_beat(env.topic, env.payload)
            return
        for h in self.events.get(pattern, ()):
            task = asyncio.create_task(self._run_event(h, env))
            self._event_tasks.add(task)
            task.add_done_callback(self._event_tasks.discard)

    async def _run_event(self, h: _Handler, env: Envelope) -> None:
        call = CallContext(env, self.info.name, h.name)
        async with self._slots:
            set_current(call)
            self.counts["events"] += 1
            stats = self.methods[h.name]
            stats.calls += 1
            stats.in_flight += 1
            started = time.perf_counter()
            try:
                with consumer_span(env, self.info.transport):
                    await self._invoke(h, (env.topic, env.payload), {}, call)
            except Exception:
                self.counts["errors"] += 1
                stats.errors += 1
                log.exception("%s.%s failed on event %s", self.info.name, h.name, env.topic,
                              extra=fields(env, self.info.name))
            finally:
                stats.in_flight -= 1
                stats.record(time.perf_counter() - started)

    # -- schedules ------------------------------------------------------------------------

    async def started(self) -> None:
        """Called once the service is served: start the schedules, if any."""
        if self.scheduler is not None:
            self.scheduler.start()

    async def _fire(self, name: str, period: float) -> None:
        h = self.scheduled[name]
        stats = self.methods[name]
        stats.calls += 1
        started = time.perf_counter()
        try:
            await self._invoke(h, (period,) if h.binder.signature.parameters else (), {})
        except Exception:
            stats.errors += 1
            raise
        finally:
            stats.record(time.perf_counter() - started)

    # -- introspection --------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """This replica's figures: per method, its pool, its bus (answers ``STATS_METHOD``)."""
        return {"service": self.info.name, "replica": self.replica, "counts": dict(self.counts),
                "methods": {name: m.snapshot() for name, m in sorted(self.methods.items())},
                "pool": {"threads": self.pool.size, "peak": self.pool.peak,
                         "max": self.pool.max_workers},
                "bus": self.bus.stats()}

    # -- drain ------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> int:
        """Take no new events; wait up to ``timeout`` for running handlers; how many remain.

        Messages held until their ``not_before`` go back to their queue at once."""
        self._draining = True
        for call in list(self._delayed):
            call._stop(DRAIN)
        if self.scheduler is not None:
            await self.scheduler.stop()
        running = {*self._running, *self._event_tasks}
        if running:
            _, pending = await asyncio.wait(running, timeout=timeout)
        else:
            pending = set()
        if pending:
            log.warning("%s: %d handler(s) still running after %.1fs drain", self.info.name,
                        len(pending), timeout)
        self.pool.shutdown(wait=False)
        return len(pending)
