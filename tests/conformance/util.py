"""Small helpers for the conformance tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(cond: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Wait until ``cond()`` is true; fail the test after ``timeout`` seconds (not a speed
    requirement: a bound so that a broken transport fails instead of hanging)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or cond}")
        await asyncio.sleep(0.01)


def wait_sync(cond: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """The blocking twin of :func:`eventually`, for sync-API tests."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or cond}")
        time.sleep(0.01)


async def poll_nodes(bus, cond: Callable[[dict], bool], timeout: float = 20.0) -> dict:
    """Ask ``bus.nodes()`` until ``cond({name: ServiceInfo})`` holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = {s.name: s for s in await bus.nodes()}
        if cond(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"discovery never showed the expected services: {sorted(found)}")
        await asyncio.sleep(0.05)
