"""The nodes the conformance suite serves on every transport."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from vertebra import Node, event, rpc, task


@dataclasses.dataclass
class Point:
    """A value type carried as a map on the wire."""

    x: int
    y: int


class Calc(Node):
    """Arithmetic and friends."""

    name = "calc"

    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self.started: list[Any] = []
        self.finished: list[Any] = []
        self.tasks: list[Any] = []
        self.events: list[tuple[str, Any]] = []
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()

    @rpc
    def add(self, a: int, b: int) -> int:
        """Return a + b."""
        return a + b

    @rpc
    def echo(self, value: Any) -> Any:
        """Return value unchanged."""
        return value

    @rpc
    def kw(self, a: int, *, scale: int = 1, offset: int = 0) -> int:
        """Keyword arguments."""
        return a * scale + offset

    @rpc
    async def slow_add(self, a: int, b: int, delay: float = 0.05) -> int:
        """Async handler."""
        await asyncio.sleep(delay)
        return a + b

    @rpc
    def fail(self, message: str) -> None:
        """Raise ValueError(message)."""
        raise ValueError(message)

    @rpc
    def whoami(self) -> str:
        """Which replica answered."""
        return self.tag

    @rpc
    def sleep(self, seconds: float, label: str = "") -> str:
        """Sleep, recording start and end."""
        self.started.append(label)
        time.sleep(seconds)
        self.finished.append(label)
        return label

    @rpc
    def norm(self, p: Point) -> Point:
        """Dataclass in, dataclass out."""
        assert isinstance(p, Point), type(p)
        return Point(abs(p.x), abs(p.y))

    @task
    def crunch(self, job: str, seconds: float = 0.0) -> None:
        """A work-queue item."""
        if seconds:
            time.sleep(seconds)
        with self.lock:
            self.tasks.append(job)

    @task
    def flaky(self, job: str, failures: int) -> None:
        """Fail ``failures`` times, then succeed."""
        with self.lock:
            n = self.attempts[job] = self.attempts.get(job, 0) + 1
        if n <= failures:
            raise RuntimeError(f"attempt {n} of {job} fails")
        with self.lock:
            self.tasks.append(job)

    @task(max_attempts=2)
    def doomed(self, x: int) -> None:
        """Always fails: buried after two attempts."""
        with self.lock:
            self.attempts[f"doomed-{x}"] = self.attempts.get(f"doomed-{x}", 0) + 1
        raise LookupError(f"no {x}")

    @event("orders.*")
    def on_order(self, topic: str, payload: Any) -> None:
        """Events under orders, one level."""
        self.events.append((topic, payload))


class Gate(Node):
    """A task that fails while the gate is shut: buried at once, replayed once it opens."""

    name = "gate"
    dedup_window = 60.0

    def __init__(self) -> None:
        self.open = False
        self.done: list[Any] = []

    @task(max_attempts=1)
    def work(self, x: Any) -> None:
        """Fail while shut, record ``x`` once open."""
        if not self.open:
            raise PermissionError(f"gate shut for {x}")
        self.done.append(x)

    @task
    def mark(self, x: Any) -> None:
        """Record ``x`` (a marker that what was sent before it has been handled)."""
        self.done.append(("mark", x))


class Solo(Node):
    """One handler at a time, to observe queueing and deadlines."""

    name = "solo"
    concurrency = 1

    def __init__(self) -> None:
        self.started: list[str] = []

    @rpc
    def hold(self, seconds: float, label: str) -> str:
        """Sleep ``seconds``."""
        self.started.append(label)
        time.sleep(seconds)
        return label


# -- issue 18: streaming, cancellation, current(), delay/at/priority ---------------------
# (Every name of vertebra used below is looked up when a handler runs, never at import:
# this module is imported by the whole suite, which must collect while they are built.)


def chunk(i: int, size: int) -> bytes:
    """Chunk ``i`` of a byte stream: ``size`` bytes that differ from every other chunk's."""
    return (i.to_bytes(4, "big") * (size // 4 + 1))[:size]


def _context() -> dict[str, Any]:
    """What ``vertebra.current()`` says inside the running handler, as plain values."""
    import vertebra
    ctx = vertebra.current()
    return {"id": ctx.id, "service": ctx.service, "method": ctx.method, "kind": ctx.kind,
            "deadline": ctx.deadline, "headers": dict(ctx.headers), "attempt": ctx.attempt,
            "cancelled": ctx.cancelled}


def _cancelled() -> bool:
    import vertebra
    return bool(vertebra.current().cancelled)


class Streamer(Node):
    """Generators and async generators whose items stream to the caller."""

    name = "streamer"

    def __init__(self) -> None:
        self.produced: dict[str, int] = {}
        self.closed: list[str] = []
        self.lock = threading.Lock()

    def _made(self, label: str, n: int) -> None:
        with self.lock:
            self.produced[label] = n

    def _close(self, label: str) -> None:
        with self.lock:
            self.closed.append(label)

    @rpc
    def count(self, n: int) -> Iterator[int]:
        """Yield 0 .. n-1."""
        yield from range(n)

    @rpc
    async def acount(self, n: int) -> AsyncIterator[int]:
        """Yield 0 .. n-1 from an async generator."""
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    @rpc
    def listed(self, n: int) -> list[int]:
        """Not a generator: one list (a stream of it is that one item)."""
        return list(range(n))

    @rpc
    def chunks(self, n: int, size: int) -> Iterator[bytes]:
        """Yield ``n`` chunks of ``size`` bytes (see :func:`chunk`)."""
        for i in range(n):
            yield chunk(i, size)

    @rpc
    def boom(self, n: int) -> Iterator[int]:
        """Yield 0 .. n-1, then raise ValueError."""
        yield from range(n)
        raise ValueError(f"boom after {n}")

    @rpc
    async def aboom(self, n: int) -> AsyncIterator[int]:
        """Yield 0 .. n-1 from an async generator, then raise ValueError."""
        for i in range(n):
            yield i
        raise ValueError(f"boom after {n}")

    @rpc
    def tracked(self, label: str, n: int) -> Iterator[int]:
        """Yield 0 .. n-1, recording how many were made (``produced[label]``, counted
        before each yield) and, in ``finally``, that the generator ended (``closed``)."""
        try:
            for i in range(n):
                self._made(label, i + 1)
                yield i
        finally:
            self._close(label)

    @rpc
    async def atracked(self, label: str, n: int) -> AsyncIterator[int]:
        """:meth:`tracked` as an async generator."""
        try:
            for i in range(n):
                self._made(label, i + 1)
                yield i
        finally:
            self._close(label)

    @rpc
    def ticks(self, label: str, interval: float, n: int = 100_000) -> Iterator[int]:
        """Yield 0, 1, 2 ... one every ``interval`` seconds (a slow, long stream)."""
        try:
            for i in range(n):
                time.sleep(interval)
                self._made(label, i + 1)
                yield i
        finally:
            self._close(label)

    @rpc
    def report(self) -> dict[str, Any]:
        """``produced`` and ``closed``, for a caller in another process."""
        with self.lock:
            return {"produced": dict(self.produced), "closed": list(self.closed)}


class Sleeper(Node):
    """Long handlers that record whether they were cancelled."""

    name = "sleeper"

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.runs: dict[str, int] = {}
        self.lock = threading.Lock()

    def _start(self, label: str) -> None:
        with self.lock:
            self.started.append(label)
            self.runs[label] = self.runs.get(label, 0) + 1

    async def _nap(self, label: str, seconds: float) -> str:
        self._start(label)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled.append(label)
            raise
        self.finished.append(label)
        return label

    def _poll(self, label: str, seconds: float) -> bool:
        self._start(label)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if _cancelled():
                with self.lock:
                    self.cancelled.append(label)
                return True
            time.sleep(0.01)
        with self.lock:
            self.finished.append(label)
        return False

    @rpc
    async def nap(self, label: str, seconds: float = 30.0) -> str:
        """Sleep on the loop; a CancelledError is recorded in ``cancelled``."""
        return await self._nap(label, seconds)

    @rpc
    def poll(self, label: str, seconds: float = 30.0) -> bool:
        """Busy in a thread, polling ``vertebra.current().cancelled``; whether it saw it."""
        return self._poll(label, seconds)

    @task
    async def nap_task(self, label: str, seconds: float = 30.0) -> None:
        """:meth:`nap` as a task."""
        await self._nap(label, seconds)

    @task
    def poll_task(self, label: str, seconds: float = 30.0) -> None:
        """:meth:`poll` as a task."""
        self._poll(label, seconds)

    @task
    def mark(self, label: str) -> None:
        """Record ``label`` (a marker: what was queued before it has been handled)."""
        self._start(label)
        self.finished.append(label)

    @rpc
    def report(self) -> dict[str, Any]:
        """The records, for a caller in another process."""
        with self.lock:
            return {"started": list(self.started), "cancelled": list(self.cancelled),
                    "finished": list(self.finished), "runs": dict(self.runs)}


class Lane(Node):
    """One task at a time: a blocker holds the slot until released; jobs queue behind it."""

    name = "lane"
    concurrency = 1

    def __init__(self) -> None:
        self.release = threading.Event()
        self.ran: list[str] = []
        self.lock = threading.Lock()

    @task
    def block(self, label: str, bound: float = 30.0) -> None:
        """Hold the only slot until :attr:`release` is set (or ``bound`` seconds)."""
        with self.lock:
            self.ran.append(label)
        self.release.wait(bound)

    @task
    def job(self, label: str) -> None:
        """Record ``label``."""
        with self.lock:
            self.ran.append(label)


class Ranked(Node):
    """One task at a time, recording the order the queue handed them over."""

    name = "ranked"
    concurrency = 1

    def __init__(self) -> None:
        self.order: list[str] = []

    @task
    def run(self, label: str) -> None:
        """Record ``label``."""
        self.order.append(label)


class Clock(Node):
    """Records when things run (``time.time()`` on the node)."""

    name = "clock"
    concurrency = 1

    def __init__(self) -> None:
        self.ran: list[tuple[str, float]] = []

    @task
    def stamp(self, label: str) -> None:
        """Record ``(label, time.time())``."""
        self.ran.append((label, time.time()))

    @rpc
    def now(self) -> float:
        """The node's ``time.time()`` when it ran."""
        return time.time()

    @rpc
    def add(self, a: int, b: int) -> int:
        """Return a + b."""
        return a + b

    def at(self, label: str) -> float | None:
        """When ``label`` ran, or None."""
        return next((t for name, t in self.ran if name == label), None)


class Ctx(Node):
    """Handlers that record what ``vertebra.current()`` tells them."""

    name = "ctx"

    def __init__(self, client: Any = None) -> None:
        self.client = client
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def _record(self, **extra: Any) -> dict[str, Any]:
        ctx = {**_context(), **extra}
        with self.lock:
            self.seen.append(ctx)
        return ctx

    @rpc
    def info(self) -> dict[str, Any]:
        """The context of this call, from a sync handler."""
        return self._record()

    @rpc
    async def ainfo(self) -> dict[str, Any]:
        """The context of this call, from an async handler, after an await too."""
        before = _context()
        await asyncio.sleep(0.01)
        return self._record(before=before)

    @rpc
    async def outer(self) -> dict[str, Any]:
        """Call :meth:`info` through ``self.client`` (an AsyncBus); the context before and
        after that call."""
        before = _context()
        inner = await self.client.proxy("ctx").info()
        return {"before": before, "inner": inner, "after": _context()}

    @task
    def flaky(self, label: str) -> None:
        """Record the context; fail the first attempt."""
        ctx = self._record(label=label)
        if ctx["attempt"] == 1:
            raise RuntimeError(f"first attempt of {label} fails")

    @event("ctx.*")
    def on_ctx(self, topic: str, payload: Any) -> None:
        """Record the context of an event handler."""
        self._record(topic=topic)
