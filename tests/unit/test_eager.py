"""vertebra.eager: a coroutine started eagerly behaves like a Task, cancellation included."""

from __future__ import annotations

import asyncio

from vertebra.eager import start_eagerly


async def test_a_coroutine_that_never_waits_runs_to_the_end_at_once() -> None:
    ran: list[str] = []

    async def body() -> None:
        ran.append("done")

    keep: set[asyncio.Task[None]] = set()
    start_eagerly(body(), keep)
    assert ran == ["done"] and not keep


async def test_a_cancel_before_the_continuation_first_runs_reaches_the_coroutine() -> None:
    seen: list[str] = []

    async def body() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    keep: set[asyncio.Task[None]] = set()
    start_eagerly(body(), keep)
    (task,) = keep
    task.cancel()                    # in the same step: the continuation has not run yet
    for _ in range(20):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert seen == ["cancelled"]
    await asyncio.sleep(0.01)
    assert not keep                  # nothing left running


async def test_a_cancel_while_waiting_reaches_the_coroutine() -> None:
    seen: list[str] = []

    async def body() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    keep: set[asyncio.Task[None]] = set()
    start_eagerly(body(), keep)
    await asyncio.sleep(0.01)
    for task in list(keep):
        task.cancel()
    await asyncio.sleep(0.05)
    assert seen == ["cancelled"] and not keep
