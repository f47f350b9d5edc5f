"""Waiting for the hub's answers: futures by key, failed all at once when the hub is lost,
and a bounded wait that works outside a Task (the sync API runs coroutines on the loop
that way, where ``asyncio.timeout`` cannot)."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

from ...expiries import Expiries

__all__ = ["Waiters", "within"]

T = TypeVar("T")


async def within(fut: asyncio.Future[T], timeout: float) -> T:
    """``fut``'s result, or TimeoutError after ``timeout`` seconds.  (Not asyncio.timeout:
    the sync API runs coroutines on the loop outside any Task.)"""
    if not fut.done():
        await asyncio.wait([fut], timeout=timeout)
        if not fut.done():
            raise TimeoutError
    return fut.result()


class Waiters(Generic[T]):
    """Futures waiting for the hub's answer, by key (a message id, a request id).

    With a ``timeout``, each future fails with TimeoutError that many seconds after it was
    added unless answered first (:class:`~vertebra.expiries.Expiries`: one timer for all)."""

    def __init__(self, timeout: float | None = None) -> None:
        self._waiting: dict[bytes, list[asyncio.Future[T]]] = {}
        self._expiries = Expiries(timeout, TimeoutError) if timeout is not None else None

    def add(self, key: bytes) -> asyncio.Future[T]:
        """A new future for ``key`` (several may wait on one key: answered in order)."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(fut)
        if self._expiries is not None:
            self._expiries.add(fut)
        return fut

    def _first(self, key: bytes) -> asyncio.Future[T] | None:
        return next((f for f in self._waiting.get(key, ()) if not f.done()), None)

    def resolve(self, key: bytes, value: T) -> bool:
        """Answer the oldest open wait on ``key``; False if nobody waits."""
        fut = self._first(key)
        if fut is None:
            return False
        fut.set_result(value)
        return True

    def reject(self, key: bytes, exc: BaseException) -> bool:
        """Fail the oldest open wait on ``key``; False if nobody waits."""
        fut = self._first(key)
        if fut is None:
            return False
        fut.set_exception(exc)
        return True

    def discard(self, key: bytes, fut: asyncio.Future[T]) -> None:
        """Forget ``fut`` (its waiter is done with it, and with any exception it holds)."""
        if fut.done() and not fut.cancelled():
            fut.exception()          # seen: a send that failed first leaves it unawaited
        futs = self._waiting.get(key)
        if futs is not None and fut in futs:
            futs.remove(fut)
            if not futs:
                del self._waiting[key]

    def fail_all(self, exc: BaseException) -> int:
        """Fail every open wait with ``exc``; how many there were."""
        n = 0
        for futs in self._waiting.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(exc)
                    n += 1
        return n

    def __len__(self) -> int:
        return sum(len(f) for f in self._waiting.values())
