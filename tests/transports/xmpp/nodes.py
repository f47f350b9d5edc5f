"""Nodes the xmpp tests serve."""

from __future__ import annotations

import asyncio
from typing import Any

from vertebra import Node, rpc, task


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
    async def slow(self, value: Any, delay: float) -> Any:
        """Return value after ``delay`` seconds."""
        await asyncio.sleep(delay)
        return value

    @task
    async def work(self, item: Any, delay: float = 0.0) -> None:
        """Record ``item`` after ``delay`` seconds."""
        await asyncio.sleep(delay)
        self.done.append(item)
