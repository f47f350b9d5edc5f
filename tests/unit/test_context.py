"""vertebra.current(): the CallContext of the running handler, in every kind of handler,
on the loop and in the pool; RuntimeError outside one."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from tests.conformance.util import eventually
from tests.unit.nodeharness import deliver, message, runtime
from vertebra import Node, event, rpc, task
from vertebra.nodes.context import CallContext, current
from vertebra.wire.deadletter import ATTEMPT_HEADER
from vertebra.wire.envelope import Envelope


def snapshot() -> dict[str, Any]:
    ctx = current()
    return {"id": ctx.id, "service": ctx.service, "method": ctx.method, "kind": ctx.kind,
            "deadline": ctx.deadline, "headers": dict(ctx.headers), "attempt": ctx.attempt,
            "cancelled": ctx.cancelled, "thread": threading.current_thread().name}


class Ctx(Node):
    name = "ctx"

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    @rpc
    async def on_loop(self) -> None:
        self.seen.append(snapshot())
        await asyncio.sleep(0)
        self.seen.append(snapshot())      # the same context after a wait

    @rpc
    def in_pool(self) -> None:
        self.seen.append(snapshot())

    @task
    def work(self) -> None:
        self.seen.append(snapshot())

    @event("things.*")
    def on_thing(self, topic: str, payload: Any) -> None:
        self.seen.append(snapshot())

    @rpc
    def headers_are_read_only(self) -> bool:
        try:
            current().headers["x"] = "y"  # type: ignore[index]
        except TypeError:
            return True
        return False


def test_current_outside_a_handler_raises():
    with pytest.raises(RuntimeError, match="only available inside a handler"):
        current()


async def test_current_in_an_async_call_handler():
    node = Ctx()
    async with runtime(node) as rt:
        env = message("ctx", "on_loop", headers={"tenant": "a"})
        inc = await deliver(rt, env)
        await eventually(lambda: inc.settled)
        first, second = node.seen
        assert first == second
        assert first["id"] == env.id and (first["service"], first["method"], first["kind"]) == \
            ("ctx", "on_loop", "call")
        assert first["deadline"] == env.deadline and first["headers"] == {"tenant": "a"}
        assert first["attempt"] == 1 and first["cancelled"] is False
        with pytest.raises(RuntimeError):
            current()                     # the handler's context did not leak into ours


async def test_current_in_a_sync_handler_runs_in_the_pool():
    node = Ctx()
    async with runtime(node) as rt:
        env = message("ctx", "in_pool")
        inc = await deliver(rt, env)
        await eventually(lambda: inc.settled)
        (seen,) = node.seen
        assert seen["id"] == env.id and seen["method"] == "in_pool"
        assert seen["thread"].startswith("vertebra-ctx")


async def test_current_in_a_task_knows_its_attempt():
    node = Ctx()
    async with runtime(node) as rt:
        env = message("ctx", "work", kind="task", timeout=None)
        env.headers[ATTEMPT_HEADER] = "3"
        inc = await deliver(rt, env)
        await eventually(lambda: inc.settled)
        (seen,) = node.seen
        assert (seen["kind"], seen["attempt"], seen["deadline"]) == ("task", 3, None)
        assert seen["cancelled"] is False


async def test_current_in_an_event_handler():
    node = Ctx()
    async with runtime(node) as rt:
        env = Envelope("event", topic="things.new", payload={"n": 1})
        await rt.handle_event("things.*", env)
        await eventually(lambda: len(node.seen) == 1)
        (seen,) = node.seen
        assert (seen["id"], seen["service"], seen["method"], seen["kind"]) == \
            (env.id, "ctx", "on_thing", "event")


async def test_current_headers_are_read_only():
    async with runtime(Ctx()) as rt:
        inc = await deliver(rt, message("ctx", "headers_are_read_only"))
        await eventually(lambda: inc.settled)
        assert inc.final is not None and inc.final.result is True


def test_cancelled_reads_the_deadline_lazily():
    ctx = CallContext(Envelope("call", service="s", method="m", deadline=time.time() - 1), "s", "m")
    assert ctx.cancelled is True
    ctx = CallContext(Envelope("call", service="s", method="m", deadline=time.time() + 3600), "s", "m")
    assert ctx.cancelled is False
    ctx._stop("cancelled")                # no task yet: only the flag
    assert ctx.cancelled is True and "cancelled" in repr(ctx)
