"""An elastic thread pool for sync handlers: grows with the backlog, shrinks when idle.

``ThreadPoolExecutor`` only grows.  This pool starts ``min_workers`` threads, adds one
whenever work is waiting and no thread is idle (up to ``max_workers``), and lets a thread
above the minimum exit after ``idle_timeout`` seconds without work.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

__all__ = ["ElasticPool"]

T = TypeVar("T")


class ElasticPool(Executor):
    """A thread pool between ``min_workers`` and ``max_workers`` threads."""

    def __init__(self, min_workers: int = 1, max_workers: int = 16, idle_timeout: float = 30.0,
                 name: str = "vertebra") -> None:
        if not 0 <= min_workers <= max_workers or max_workers < 1:
            raise ValueError("need 0 <= min_workers <= max_workers and max_workers >= 1")
        self.min_workers, self.max_workers, self.idle_timeout = min_workers, max_workers, idle_timeout
        self._name = name
        self._cond = threading.Condition()
        self._work: collections.deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...],
                                            dict[str, Any]]] = collections.deque()
        self._threads = 0
        self._idle = 0
        self._shutdown = False
        self.peak = 0
        with self._cond:
            for _ in range(min_workers):
                self._spawn()

    @property
    def size(self) -> int:
        """Threads alive now."""
        return self._threads

    def _spawn(self) -> None:
        self._threads += 1
        self.peak = max(self.peak, self._threads)
        threading.Thread(target=self._worker, name=f"{self._name}-{self._threads}", daemon=True).start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on a pool thread."""
        fut: Future[T] = Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot submit to a pool that was shut down")
            self._work.append((fut, fn, args, kwargs))
            if self._idle < len(self._work) and self._threads < self.max_workers:
                self._spawn()
            self._cond.notify()
        return fut

    def _worker(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                while not self._work and not self._shutdown:
                    if not self._cond.wait(self.idle_timeout) and not self._work \
                            and self._threads > self.min_workers:
                        self._idle -= 1
                        self._threads -= 1
                        return
                self._idle -= 1
                if not self._work:   # shut down and nothing left
                    self._threads -= 1
                    return
                fut, fn, args, kwargs = self._work.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                fut.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; threads finish what is queued (or cancel it) and exit."""
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                while self._work:
                    self._work.popleft()[0].cancel()
            self._cond.notify_all()
        if wait:
            with self._cond:
                while self._threads:
                    self._cond.wait(0.05)
