"""Recorders: stand-in services and subscriptions that keep everything sent to them.

A :class:`RecordingService` is served like a Node under any service name; it accepts
every method (calls, casts and tasks), records each message, acknowledges it and answers
calls from ``answers``.  A subscription made by the harness records events the same way.
Either way the test asserts on a :class:`Recorder`::

    mail = harness.record("mailer")
    app.sign_up("bob@example.org")             # the code under test casts to mailer.send
    [rec] = mail.wait_for(1)
    assert (rec.method, rec.args) == ("send", ("bob@example.org",))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..transports.base import Incoming
from ..wire.envelope import Envelope
from ..wire.errors import error_to_wire
from ..wire.info import MethodInfo, ServiceInfo

__all__ = ["Record", "Recorder", "RecordingService"]


@dataclass(frozen=True, slots=True)
class Record:
    """One message a recorder received: ``kind`` is "call", "cast", "task" or "event"."""

    kind: str
    service: str = ""
    method: str = ""
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    topic: str = ""
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    id: str = ""

    @classmethod
    def of(cls, env: Envelope) -> Record:
        """The record of a received envelope."""
        return cls(env.kind, env.service, env.method, tuple(env.args), dict(env.kwargs),
                   env.topic, env.payload, dict(env.headers), env.id)


class Recorder:
    """The messages one stand-in service or one subscription received, in arrival order.

    Thread-safe: messages arrive on a bus's loop, the test reads from its own thread (sync
    tests, :meth:`wait_for`) or loop (async tests, :meth:`wait_for_async`).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        """What is recorded (``service mailer``, ``events orders.*``), for messages."""
        self._records: list[Record] = []
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        """The loop the records arrive on (set when the recorder is served)."""

    def add(self, record: Record) -> None:
        """Keep ``record`` and wake whoever waits for it."""
        with self._cond:
            self._records.append(record)
            self._cond.notify_all()
            waiters = list(self._waiters)
        for loop, ev in waiters:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # that loop is closed: its waiter is gone
                pass

    @property
    def records(self) -> list[Record]:
        """A copy of everything received so far."""
        with self._cond:
            return list(self._records)

    def __len__(self) -> int:
        with self._cond:
            return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    def matching(self, method: str | None = None, *, topic: str | None = None,
                 kind: str | None = None) -> list[Record]:
        """The records for ``method`` (and/or ``topic``, ``kind``), in order."""
        return [r for r in self.records if (method is None or r.method == method)
                and (topic is None or r.topic == topic) and (kind is None or r.kind == kind)]

    def clear(self) -> None:
        """Forget what was recorded."""
        with self._cond:
            self._records.clear()

    def _timeout(self, n: int, timeout: float) -> AssertionError:
        got = self.records
        return AssertionError(f"{self.what}: expected {n} message(s) within {timeout:g}s, "
                              f"got {len(got)}: {got!r}")

    def wait_for(self, n: int = 1, timeout: float = 10.0) -> list[Record]:
        """Block until at least ``n`` messages arrived; all of them.  Fails the test
        (AssertionError) after ``timeout`` seconds.  In an async test use
        :meth:`wait_for_async`: blocking the loop that delivers would wait in vain."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is self.loop:
            raise RuntimeError(f"{self.what}: wait_for() would block the loop that delivers; "
                               "use `await recorder.wait_for_async(...)`")
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._records) >= n, timeout):
                raise self._timeout(n, timeout)
            return list(self._records)

    async def wait_for_async(self, n: int = 1, timeout: float = 10.0) -> list[Record]:
        """Wait until at least ``n`` messages arrived; all of them.  Fails the test
        (AssertionError) after ``timeout`` seconds."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._cond:
            self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    entry[1].clear()
                    if len(self) >= n:
                        return self.records
                    await entry[1].wait()
        except TimeoutError:
            raise self._timeout(n, timeout) from None
        finally:
            with self._cond:
                self._waiters.remove(entry)

    def __repr__(self) -> str:
        return f"<Recorder {self.what}: {len(self)} message(s)>"


class RecordingService:
    """A servable stand-in for service ``name`` that records what it is sent.

    ``answers`` maps a method name to the result of a call to it: a value, or a function
    called with the call's arguments (what it raises becomes the caller's RemoteError).
    Calls to other methods are answered None.  Casts and tasks are recorded and acked.
    """

    def __init__(self, name: str, answers: Mapping[str, Any] | None = None, *,
                 concurrency: int = 16) -> None:
        self.name = name
        self.answers = dict(answers or {})
        self.concurrency = concurrency
        self.recorder = Recorder(f"service {name}")

    def __vertebra_runtime__(self, bus: Any) -> _RecordingRuntime:
        """The runtime that serves this stand-in on ``bus``."""
        return _RecordingRuntime(self, bus.transport.scheme)


class _RecordingRuntime:
    """The ServiceRuntime of a RecordingService."""

    def __init__(self, service: RecordingService, transport: str) -> None:
        self.service = service
        methods = tuple(MethodInfo(m, "rpc", doc="recorded") for m in sorted(service.answers))
        self.info = ServiceInfo(service.name, methods, "a vertebra.testing recorder", 1, transport)
        self.prefetch = service.concurrency
        self.patterns: tuple[str, ...] = ()

    async def handle(self, incoming: Incoming) -> None:
        env = incoming.envelope
        rec = self.service.recorder
        rec.loop = asyncio.get_running_loop()
        rec.add(Record.of(env))
        if env.kind == "call":
            answer = self.service.answers.get(env.method)
            try:
                result = answer(*env.args, **env.kwargs) if callable(answer) else answer
                if asyncio.iscoroutine(result):
                    result = await result
                reply = env.answer(result)
            except Exception as exc:
                reply = env.fail(error_to_wire(exc))
            await incoming.reply(reply)
        await incoming.ack()

    async def handle_event(self, pattern: str, env: Envelope) -> None:
        """A recording service subscribes to nothing."""

    async def started(self) -> None:
        """Nothing to start."""

    async def drain(self, timeout: float) -> int:
        """Nothing runs for long: nothing to wait for."""
        return 0

    def stats(self) -> dict[str, Any]:
        """How many messages it recorded."""
        return {"service": self.info.name, "recorded": len(self.service.recorder)}
