"""Serving one Node on one Bus: dispatch, arguments, deadlines, concurrency, drain.

Sync handlers run in the node's own bounded thread pool and never block the event loop;
async handlers run on the loop.  ``concurrency`` bounds handlers running at once (calls,
casts, tasks and events together) and is the transport's prefetch.  Work whose deadline
has passed is answered with a timeout error and never started.  A handler that raises is
answered with a RemoteError (calls), logged (casts, events) or handed back to the queue
for another attempt (tasks, by the one policy of :mod:`vertebra.nodes.retry`); the node
keeps serving in every case.
"""

from __future__ import annotations

import asyncio
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
from typing import TYPE_CHECKING, Any

from ..backoff import Backoff
from ..dispatch.logfields import fields
from ..dispatch.slip import SLIP_HEADER, Slip
from ..dispatch.tracing import consumer_span
from ..eager import start_eagerly
from ..transports.base import Incoming
from ..wire.deadletter import attempt_of, with_attempt
from ..wire.envelope import Envelope
from ..wire.errors import ProtocolError, error_to_wire, wire_error
from ..wire.info import ServiceInfo
from .binding import Binder, method_info
from .decorators import ENTRYPOINT_ATTR, Entrypoint
from .dedup import Dedup
from .pool import ElasticPool
from .retry import RetryPolicy
from .schedule import Schedule, Scheduler
from .stats import MethodStats

if TYPE_CHECKING:
    from ..dispatch.bus import AsyncBus
    from .node import Node

__all__ = ["STATS_METHOD", "NodeRuntime"]

log = logging.getLogger("vertebra.node")

STATS_METHOD = "_vertebra_stats"
"""The built-in method every node answers with its statistics (see :meth:`NodeRuntime.stats`)."""


@dataclass(slots=True)
class _Handler:
    name: str
    entry: Entrypoint
    func: Callable[..., Any]
    is_async: bool
    binder: Binder


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
            h = _Handler(attr, entry, func, inspect.iscoroutinefunction(func), Binder(func))
            if entry.kind == "event":
                self.events.setdefault(entry.pattern, []).append(h)
            elif entry.kind == "schedule":
                self.scheduled[attr] = h
            else:
                self.handlers[attr] = h
        self.patterns = tuple(self.events)
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
        self._slots = asyncio.Semaphore(self.prefetch)
        max_workers = cls.max_workers or self.prefetch
        self.pool = ElasticPool(min(cls.min_workers, max_workers), max_workers, cls.idle_timeout,
                                name=f"vertebra-{cls.name}")
        self.dedup = Dedup(cls.dedup_window)
        self._running: set[asyncio.Task[None]] = set()
        self._draining = False
        self.counts = {"calls": 0, "errors": 0, "expired": 0, "events": 0, "duplicates": 0,
                       "retried": 0, "buried": 0}
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
        start_eagerly(self._run(incoming), self._running)

    async def _run(self, incoming: Incoming) -> None:
        env = incoming.envelope
        is_call = env.kind == "call"
        h = self.handlers.get(env.method)
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
            if self.dedup.enabled:
                seen, answer = self.dedup.check(env)
                if seen:
                    self.counts["duplicates"] += 1
                    log.info("%s: dropped duplicate %s %s", self.info.name, env.kind, env.id,
                             extra=fields(env))
                    if is_call and answer is not None:
                        await incoming.reply(dataclasses.replace(answer, reply_to=env.reply_to))
                    await incoming.ack()
                    return
            async with self._slots:
                if env.expired():
                    self.counts["expired"] += 1
                    if is_call:
                        await incoming.reply(env.fail(wire_error(
                            "timeout", "CallTimeout",
                            f"{self.info.name}.{env.method}: deadline passed before it started")))
                    await incoming.ack()
                    return
                self.counts["calls"] += 1
                stats = self.methods[h.name]
                stats.calls += 1
                stats.in_flight += 1
                started = time.perf_counter()
                bound = False
                try:
                    with consumer_span(env, self.info.transport):
                        args, kwargs = h.binder.bind(env.args, env.kwargs)
                        bound = True
                        result = await self._invoke(h, args, kwargs)
                except Exception as exc:
                    self.counts["errors"] += 1
                    stats.errors += 1
                    await self._failed(incoming, h, exc, bad_arguments=not bound)
                    return
                finally:
                    stats.in_flight -= 1
                    stats.record(time.perf_counter() - started)
            if SLIP_HEADER in env.headers:
                await self._forward(env, result)
            if is_call:
                answer = env.answer(result)
                try:
                    await incoming.reply(answer)
                except ProtocolError as exc:
                    answer = env.fail(wire_error("remote", "ProtocolError", f"cannot send the result: {exc}"))
                    await incoming.reply(answer)
                self.dedup.remember(env, answer)
            await incoming.ack()
        except Exception:
            log.exception("%s: failed to answer %s %s", self.info.name, env.kind, env.id,
                          extra=fields(env))

    async def _invoke(self, h: _Handler, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if h.is_async:
            return await h.func(*args, **kwargs)
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(ctx.run, h.func, *args, **kwargs))

    async def _forward(self, env: Envelope, result: Any) -> None:
        """Routing slip: hand the result to the next step, or announce the workflow's end."""
        try:
            slip = Slip.decode(env.headers[SLIP_HEADER])
        except ProtocolError as exc:
            log.error("%s: %s", self.info.name, exc, extra=fields(env))
            return
        self.bus.publish(slip.done, {"run": slip.run, "step": f"{env.service}.{env.method}",
                                     "index": slip.index})
        if slip.steps:
            nxt = slip.steps[0]
            headers = {k: v for k, v in env.headers.items() if k != SLIP_HEADER}
            headers[SLIP_HEADER] = slip.rest().encode()
            self.bus.cast(nxt.service, nxt.method, [result, *nxt.args], dict(nxt.kwargs), kind="task",
                          headers=headers)
        else:
            self.bus.publish(slip.done, {"run": slip.run, "result": result})

    def _slip_failed(self, env: Envelope, error: dict[str, Any]) -> None:
        try:
            slip = Slip.decode(env.headers[SLIP_HEADER])
        except ProtocolError:
            return
        if slip.retries > 0:
            self.bus.cast(env.service, env.method, env.args, env.kwargs, kind="task",
                          headers={**env.headers, SLIP_HEADER: slip.retry().encode()})
            return
        self.bus.publish(slip.done, {"run": slip.run, "error": error, "step": f"{env.service}.{env.method}",
                                     "index": slip.index})

    async def _failed(self, incoming: Incoming, h: _Handler, exc: Exception,
                      bad_arguments: bool = False) -> None:
        env = incoming.envelope
        tb = traceback.format_exc() if type(self.node).allow_tracebacks else ""
        error = {**error_to_wire(exc, tb), "node": self.replica}
        if bad_arguments:      # the arguments did not fit the signature: the handler never ran
            error["bad_arguments"] = True
        if env.kind == "call":
            await incoming.reply(env.fail(error))
            await incoming.ack()
            return
        if SLIP_HEADER in env.headers:
            self._slip_failed(env, error)   # the routing slip has its own retries and report
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
        """Run every handler subscribed with ``pattern`` for this event."""
        if self._draining:
            return
        if self.scheduler is not None and pattern == self.scheduler.topic:
            self.scheduler.on_beat(env.topic, env.payload)
            return
        for h in self.events.get(pattern, ()):
            task = asyncio.create_task(self._run_event(h, env))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_event(self, h: _Handler, env: Envelope) -> None:
        async with self._slots:
            self.counts["events"] += 1
            stats = self.methods[h.name]
            stats.calls += 1
            stats.in_flight += 1
            started = time.perf_counter()
            try:
                with consumer_span(env, self.info.transport):
                    await self._invoke(h, (env.topic, env.payload), {})
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
        """Take no new events; wait up to ``timeout`` for running handlers; how many remain."""
        self._draining = True
        if self.scheduler is not None:
            await self.scheduler.stop()
        running = set(self._running)
        if running:
            _, pending = await asyncio.wait(running, timeout=timeout)
        else:
            pending = set()
        if pending:
            log.warning("%s: %d handler(s) still running after %.1fs drain", self.info.name,
                        len(pending), timeout)
        self.pool.shutdown(wait=False)
        return len(pending)
