"""Start a coroutine at once, in the caller's step; a Task only if it has to wait.

Python 3.12 calls this an eager task.  Most handlers of a small call finish without ever
waiting, and each task creation costs a trip round the event loop; starting them eagerly
removes that trip.  When the coroutine does wait, the rest of it runs in a Task exactly as
if it had been created with ``asyncio.create_task``.

On 3.12 and later this is the standard library's own ``asyncio.Task(eager_start=True)``
(one task, not a global task factory, so the application's other tasks keep their usual
scheduling).  The hand-driven start below exists only for 3.11, which vertebra supports
(``requires-python >= 3.11``); CI runs 3.11, 3.12 and 3.13.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine
from typing import Any

__all__ = ["start_eagerly"]


def start_eagerly(coro: Coroutine[Any, Any, None],
                  keep: set[asyncio.Task[None]]) -> None:
    """Run ``coro`` until it first waits; then continue it in a task kept in ``keep``."""
    if sys.version_info >= (3, 12):
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
    _drive(asyncio.get_running_loop(), coro, waiting, ctx, keep, False)


def _drive(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None], waiting: Any,
           ctx: contextvars.Context, keep: set[asyncio.Task[None]], cancelled: bool) -> None:
    started = [False]
    task = loop.create_task(_resume(coro, waiting, started, cancelled), context=ctx)
    keep.add(task)

    def done(t: asyncio.Task[None]) -> None:
        keep.discard(t)
        if t.cancelled() and not started[0]:
            # cancelled before its first step: the CancelledError went to _resume, not to
            # the coroutine; hand it on in a new task, so that the coroutine sees it
            _drive(loop, coro, waiting, ctx, keep, True)

    task.add_done_callback(done)


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any, started: list[bool],
                  cancelled: bool) -> None:
    """Drive a coroutine that already started and is now waiting on ``waiting``
    (``cancelled``: first throw it the cancellation an earlier task of it could not)."""
    started[0] = True
    while True:
        try:
            if cancelled:
                cancelled = False
                raise asyncio.CancelledError
            if waiting is None:           # a bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
            else:
                await asyncio.wait([waiting])
        except asyncio.CancelledError:
            if isinstance(waiting, asyncio.Future):
                waiting.cancel()
            try:
                waiting = coro.throw(asyncio.CancelledError())
            except StopIteration:
                return
            continue
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
