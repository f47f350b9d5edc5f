"""Nodes the xmpp tests serve."""

from __future__ import annotations

import asyncio
from typing import Any

from vertebra import Node, event, rpc, task


class Calc(Node):
    """A small service for the xmpp tests."""

    name = "calc"

    def __init__(self) -> None:
        self.done: list[Any] = []

    @rpc
    def add(self, a: int, b: int) -> int:
        """Return a + b."""
        return a + b

    @rpc
    def echo(self, value: Any) -> Any:
        """Return value unchanged."""
        return value

    @rpc
    def fail(self, message: str) -> None:
        """Raise ValueError(message)."""
        raise ValueError(message)

    @rpc
    def typo(self, value: Any) -> None:
        """Raise a TypeError of the handler's own (not an argument mismatch)."""
        raise TypeError(f"the handler itself raised on {value!r}")

    @rpc
    async def slow(self, value: Any, delay: float) -> Any:
        """Return value after ``delay`` seconds."""
        await asyncio.sleep(delay)
        return value

    @task
    async def work(self, item: Any, delay: float = 0.0) -> None:
        """Record ``item`` after ``delay`` seconds."""
        await asyncio.sleep(delay)
        self.done.append(item)


class Recorder(Node):
    """Records its tasks and the events under ``live.*``; ``hold`` waits for ``release``."""

    name = "calc"

    def __init__(self) -> None:
        self.done: list[Any] = []
        self.events: list[Any] = []
        self.release = asyncio.Event()

    @task
    def work(self, item: Any) -> None:
        """Record ``item``."""
        self.done.append(item)

    @task
    async def hold(self, item: Any) -> None:
        """Record ``item`` once the test sets ``release``."""
        await self.release.wait()
        self.done.append(item)

    @task(max_attempts=1)
    def doomed(self, item: Any) -> None:
        """Fail (buried at once: one attempt) unless ``item`` starts with "ok"."""
        if not str(item).startswith("ok") and not self.release.is_set():
            raise LookupError(f"no {item}")
        self.done.append(item)

    @rpc
    def shout(self, item: Any) -> None:
        """An @rpc method that fails: cast to it, it is dropped (a cast has no dead letter)."""
        raise ValueError(f"cannot shout {item}")

    @event("live.*")
    def on_live(self, topic: str, payload: Any) -> None:
        """Record events under live."""
        self.events.append(payload)


def recorder(name: str) -> Recorder:
    """A Recorder serving the service ``name``."""
    return type(f"Recorder_{name}", (Recorder,), {"name": name})()
