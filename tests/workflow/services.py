"""Nodes the workflow tests chain together."""

from __future__ import annotations

import threading

from vertebra import Node, rpc


class Maths(Node):
    """Small arithmetic steps."""

    name = "maths"

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()

    @rpc
    def inc(self, x: int) -> int:
        """x + 1."""
        return x + 1

    @rpc
    def double(self, x: int) -> int:
        """2x."""
        return 2 * x

    @rpc
    def split(self, n: int) -> list[int]:
        """[0, 1, ..., n-1]."""
        return list(range(n))

    @rpc
    def total(self, xs: list[int]) -> int:
        """The sum."""
        return sum(xs)

    @rpc
    def explode(self, x: int) -> int:
        """Always fails."""
        raise ArithmeticError(f"cannot take {x}")

    @rpc
    def flaky(self, x: int, key: str, failures: int) -> int:
        """Fails ``failures`` times for ``key``, then returns x."""
        with self.lock:
            n = self.attempts[key] = self.attempts.get(key, 0) + 1
        if n <= failures:
            raise RuntimeError(f"attempt {n}")
        return x


class Store(Node):
    """Keeps things; can undo."""

    name = "store"

    def __init__(self) -> None:
        self.items: list[str] = []
        self.deleted: list[str] = []

    @rpc
    def put(self, item: object) -> str:
        """Store and return a key."""
        key = f"key-{len(self.items)}"
        self.items.append(key)
        return key

    @rpc
    def delete(self, key: str) -> None:
        """Undo a put."""
        self.deleted.append(key)
