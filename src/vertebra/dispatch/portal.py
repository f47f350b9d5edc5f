"""A blocking portal: an event loop on a daemon thread that sync code calls into."""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..eager import start_eagerly
from . import forks

__all__ = ["Portal"]

T = TypeVar("T")


class Portal:
    """Runs one asyncio loop on its own daemon thread; safe to call from any thread."""

    def __init__(self, name: str = "vertebra-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self.generation = forks.generation()
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def _refuse_own_thread(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self.generation != forks.generation():
            coro.close()
            forks.check_not_forked(self.generation, "this bus (its loop thread)")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("blocking call from the bus's own loop thread would deadlock; "
                               "use the async API there")

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; a future for its result."""
        self._refuse_own_thread(coro)
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block until it finishes.

        Without a ``timeout`` (every call the sync facade makes: its calls carry their own
        deadline) the coroutine starts eagerly in a plain callback and hands back its
        outcome through a bare lock: half the cost of a Task and a concurrent Future.
        """
        if timeout is not None:
            return self.submit(coro).result(timeout)
        self._refuse_own_thread(coro)
        done = _thread.allocate_lock()
        done.acquire()
        outcome: list[Any] = []

        async def body() -> None:
            try:
                outcome.append((True, await coro))
            except BaseException as exc:   # handed to the waiting thread, raised there
                outcome.append((False, exc))
            finally:
                done.release()

        started = body()
        try:
            self.loop.call_soon_threadsafe(start_eagerly, started, self._tasks)
        except RuntimeError:
            started.close()
            coro.close()
            raise
        done.acquire()
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def stop(self) -> None:
        """Stop the loop and join its thread (idempotent; nothing to do in a forked child)."""
        if self.generation != forks.generation():
            return
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(10)
