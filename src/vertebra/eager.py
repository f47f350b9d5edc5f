"""Start a coroutine at once, in the caller's step; a Task only if it has to wait.

Python 3.12 calls this an eager task.  Most handlers of a small call finish without ever
waiting, and each task creation costs a trip round the event loop; starting them eagerly
removes that trip.  When the coroutine does wait, the rest of it runs in a Task exactly as
if it had been created with ``asyncio.create_task``.

On 3.12 and later this is the standard library's own ``asyncio.Task(eager_start=True)``
(one task, not a global task factory, so the application's other tasks keep their usual
scheduling).  The hand-driven start below exists only for 3.11, which vertebra supports
(``requires-python >= 3.11``); CI runs 3.11, 3.12 and 3.13.

On 3.11 a coroutine that waited goes on in a plain Task whose coroutine is a thin
forwarder (:func:`_continuation`): it hands the Task the very future the coroutine waits
on, and passes each wake-up (a ``send`` or a ``throw``: a cancel, the future's error) on to
the coroutine, so the Task waits, wakes and cancels exactly as one running the coroutine
itself would.  The forwarder is primed before the Task exists, so that even a cancel that
comes before the Task's first step is thrown in where it is passed on.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["start_eagerly", "start_in"]

_NATIVE: bool = sys.version_info >= (3, 12)


def start_eagerly(coro: Coroutine[Any, Any, None],
                  keep: set[asyncio.Task[None]]) -> None:
    """Run ``coro`` until it first waits; then continue it in a task kept in ``keep``."""
    if _NATIVE:
        task = asyncio.Task(coro, loop=asyncio.get_running_loop(),  # type: ignore[call-arg,unused-ignore]
                            eager_start=True)   # 3.12.1 needs the loop given: it does not look it up
        if not task.done():
            keep.add(task)
            task.add_done_callback(keep.discard)
        return
    # Like a Task: the coroutine runs in a copy of the caller's context, and keeps that one
    # context from its first step to its last (context variables set inside it, e.g. the
    # current tracing span, are reset in the context they were set in).
    ctx = contextvars.copy_context()
    try:
        waiting = ctx.run(coro.send, None)
    except StopIteration:
        return
    _go_on(coro, waiting, ctx, keep)


def start_in(coro: Coroutine[Any, Any, None], keep: set[asyncio.Task[None]],
             ctx: contextvars.Context) -> None:
    """:func:`start_eagerly` for a loop callback that runs in ``ctx``, a context made for
    that callback alone (``loop.call_soon(callback, ..., context=ctx)``): on 3.11 the
    coroutine's first step runs right here, in ``ctx`` (no copy); if it waits, the rest of
    it runs in a task kept in ``keep``, in ``ctx`` still."""
    if _NATIVE:
        start_eagerly(coro, keep)
        return
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    _go_on(coro, waiting, ctx, keep)


def _go_on(coro: Coroutine[Any, Any, None], waiting: Any, ctx: contextvars.Context,
           keep: set[asyncio.Task[None]]) -> None:
    """Continue ``coro``, which waits on ``waiting`` (what it last yielded), in a Task."""
    rest = _continuation(coro, waiting)
    rest.send(None)                  # primed: stands at its first yield
    task = asyncio.get_running_loop().create_task(rest, context=ctx)
    keep.add(task)
    task.add_done_callback(keep.discard)


def _cancel_waited(waiting: Any) -> None:
    """A cancel reaches a task waiting on ``waiting``: like a Task, cancel that too."""
    if isinstance(waiting, asyncio.Future) and not waiting.done():
        waiting.cancel()


@types.coroutine
def _continuation(coro: Coroutine[Any, Any, None], waiting: Any) -> Generator[Any, None, None]:
    """The coroutine of the Task that goes on with ``coro``, which waits on ``waiting``.

    Each future ``coro`` yields is yielded on to the Task, unchanged (its
    ``_asyncio_future_blocking`` flag still set), so the Task itself waits on it; what the
    Task sends or throws in when it wakes goes on to ``coro``."""
    thrown: BaseException | None = None
    try:
        yield None                   # where priming leaves it, until the Task's first step
    except BaseException as exc:     # cancelled before its first step
        thrown = exc
        if isinstance(exc, asyncio.CancelledError):
            _cancel_waited(waiting)
    while True:
        if thrown is None and waiting is not None and not (
                isinstance(waiting, asyncio.Future) and waiting.done()):
            try:
                yield waiting        # the Task waits on it (or says it is a bad yield)
            except BaseException as exc:
                thrown = exc
                if isinstance(exc, asyncio.CancelledError):
                    _cancel_waited(waiting)
        try:
            if thrown is None:
                waiting = coro.send(None)
            else:
                error, thrown = thrown, None
                waiting = coro.throw(error)
        except StopIteration:
            return
