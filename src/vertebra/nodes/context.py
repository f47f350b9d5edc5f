"""``vertebra.current()``: what a running handler can know about the message it runs for.

The node's runtime makes one :class:`CallContext` for each call, cast, task or event it
runs and sets it in a context variable before the handler starts; a sync handler runs in
the pool inside a copy of that context, so ``current()`` works there too.  Outside a
handler ``current()`` raises RuntimeError.

The same object carries the runtime's bookkeeping for stopping the run (a cancel, the
deadline, a drain): the underscored attributes and methods below are the runtime's, not
the handler's.  Stopping works like this: the runtime *arms* the context while the run
waits in a place where a ``Task.cancel()`` is safe (holding a message until due, waiting
for a concurrency slot, an async handler, a stream waiting for credit or its generator).
A stop that comes while armed cancels the task once (``_requested``); the runtime catches
that one CancelledError (:meth:`CallContext._absorb`, with ``Task.uncancel()``), so a
cancellation that is not its own (the bus shutting down) still propagates.  A stop that
comes while not armed (a sync handler in the pool, an answer being sent) only sets the
flag, which the runtime and :attr:`CallContext.cancelled` read.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ..wire.deadletter import attempt_of
from ..wire.envelope import Envelope

__all__ = ["CallContext", "current"]

_DEFER_CANCEL: Final = sys.version_info < (3, 12)
"""On 3.11, vertebra.eager continues a message in a task that drives the coroutine by
hand; a cancel before that task's first step would never reach the coroutine, so the
cancel is made one loop step later, once the task waits where it forwards cancels."""

CANCELLED: Final = "cancelled"
"""Why a run stopped: a cancel control message (or the id was cancelled before it came)."""
TIMEOUT: Final = "timeout"
"""Why a run stopped: its deadline passed while it ran."""
DRAIN: Final = "drain"
"""Why a run stopped: the node drains and the message was not due yet (it goes back)."""


class Interrupted(Exception):
    """Raised inside the runtime where a run notices it was stopped without a CancelledError
    (the stop came while it was not armed); the reason is the context's ``_why``."""


class CallContext:
    """The message a handler is running for; ``vertebra.current()`` inside a handler.

    ``id``, ``service``, ``method``, ``kind`` ("call", "cast", "task" or "event"),
    ``deadline`` (epoch seconds, or None), ``headers`` (read-only), ``attempt`` (1 for the
    first run of a task) and ``cancelled``: True once the caller cancelled the message or
    its deadline passed.  An async handler is also cancelled then (CancelledError); a sync
    handler, which cannot be interrupted, should look at ``cancelled`` now and then.
    """

    __slots__ = ("_armed", "_credit", "_due", "_env", "_method", "_requested", "_sent",
                 "_service", "_task", "_timer", "_wake", "_why")

    def __init__(self, env: Envelope, service: str, method: str) -> None:
        self._env = env
        self._service = service
        self._method = method
        self._why: str | None = None          # why the run was stopped, once it was
        self._task: asyncio.Task[None] | None = None   # the task running it, once it waited
        self._armed = False                   # a stop may cancel the task now
        self._requested = False               # a cancel of ours is pending on the task
        self._due = False                     # the deadline stops the run, once it waits
        self._timer: asyncio.TimerHandle | None = None  # ... with this timer
        self._credit = 0                      # a stream may send items with seq < this
        self._sent = 0                        # items a stream has sent
        self._wake: asyncio.Future[None] | None = None  # a stream waiting for credit

    # -- what a handler reads -----------------------------------------------------------------

    @property
    def id(self) -> str:
        """The message id (the same on every redelivery and retry)."""
        return self._env.id

    @property
    def service(self) -> str:
        """The service the message was sent to."""
        return self._service

    @property
    def method(self) -> str:
        """The method (for an event: the name of the handler that runs)."""
        return self._method

    @property
    def kind(self) -> str:
        """``call``, ``cast``, ``task`` or ``event``."""
        return self._env.kind

    @property
    def deadline(self) -> float | None:
        """When the caller stops waiting, in epoch seconds (None: no deadline)."""
        return self._env.deadline

    @property
    def headers(self) -> Mapping[str, str]:
        """The message's headers (read-only)."""
        return MappingProxyType(self._env.headers)

    @property
    def attempt(self) -> int:
        """Which attempt this run is: 1, then 2, 3, ... for a task tried again."""
        return attempt_of(self._env)

    @property
    def cancelled(self) -> bool:
        """Whether the message was cancelled or its deadline has passed."""
        if self._why is not None:
            return True
        deadline = self._env.deadline
        return deadline is not None and time.time() >= deadline

    def __repr__(self) -> str:
        return (f"<CallContext {self.kind} {self._service}.{self._method} id={self.id}"
                f"{' cancelled' if self.cancelled else ''}>")

    # -- the runtime's side -----------------------------------------------------------------

    def _stop(self, why: str) -> None:
        """Stop the run (the first reason given is the one that counts)."""
        if self._why is None:
            self._why = why
        task = self._task
        if self._armed and not self._requested and task is not None and not task.done():
            if _DEFER_CANCEL:
                task.get_loop().call_soon(self._cancel_task)
            else:
                self._cancel_task()

    def _cancel_task(self) -> None:
        task = self._task
        if not self._armed or self._requested or task is None or task.done():
            return                        # the armed stretch ended meanwhile: the flag is read
        try:
            running = asyncio.current_task()
        except RuntimeError:
            running = None
        if task is not running:           # a task never cancels itself here: its flag is read
            self._requested = True
            task.cancel()

    def _started_task(self, task: asyncio.Task[None]) -> None:
        """The run went on in ``task`` (it waited); a stop that came before takes effect."""
        self._task = task
        if self._due:
            self._start_timer(task.get_loop())
        if self._why is not None:
            self._stop(self._why)

    def _watch_deadline(self) -> None:
        """Let the deadline stop the run from now on.  The timer is made only once the run
        waits (goes on in a task): a handler done in its first step needs none."""
        if self._env.deadline is None:
            return
        self._due = True
        if self._task is not None:
            self._start_timer(self._task.get_loop())

    def _start_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = self._env.deadline
        assert deadline is not None
        if self._timer is None:
            self._timer = loop.call_at(loop.time() + (deadline - time.time()), self._stop, TIMEOUT)

    def _unwatch_deadline(self) -> None:
        """The deadline no longer stops the run (its handler or stream ended)."""
        self._due = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _absorb(self) -> bool:
        """In ``except CancelledError``: whether it is ours alone (then it is uncancelled)."""
        if not self._requested:
            return False
        self._requested = False
        task = self._task
        return task is not None and task.uncancel() == 0

    def _disarm(self) -> None:
        """Leave an armed stretch; a cancel of ours that the handler swallowed is undone."""
        self._armed = False
        if self._requested:
            self._requested = False
            if self._task is not None:
                self._task.uncancel()


_current: Final[contextvars.ContextVar[CallContext]] = contextvars.ContextVar("vertebra.current")


def current() -> CallContext:
    """The :class:`CallContext` of the call, cast, task or event the running handler serves.

    Raises RuntimeError outside a handler (and in threads the handler started itself,
    which do not inherit its context).
    """
    ctx = _current.get(None)
    if ctx is None:
        raise RuntimeError("vertebra.current() is only available inside a handler that a node "
                           "is running (a call, cast, task or event)")
    return ctx


def set_current(ctx: CallContext) -> None:
    """Make ``ctx`` what ``current()`` returns in the running context (the runtime's)."""
    _current.set(ctx)
