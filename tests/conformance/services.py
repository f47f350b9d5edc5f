"""The nodes the conformance suite serves on every transport."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
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
