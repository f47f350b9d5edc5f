"""``vertebra.current()``: inside a handler, what is being handled (.id .service .method
.kind .deadline .headers .attempt .cancelled); outside one, RuntimeError.  The same on
every transport."""

from __future__ import annotations

import threading
import time

import pytest

import vertebra

from .services import Ctx
from .util import eventually, wait_sync


async def _ctx(open_bus) -> tuple[Ctx, vertebra.AsyncBus]:
    node_bus = await open_bus("ctx")
    node = Ctx(client=node_bus)
    await node_bus.serve(node)
    return node, await open_bus("client")


@pytest.mark.parametrize("method", ["info", "ainfo"])
async def test_a_call_sees_its_own_context(open_bus, method):
    _, client = await _ctx(open_bus)
    m = client.proxy("ctx")[method].options(timeout=7.0, headers={"tenant": "a", "x-trace": "t1"})
    before = time.time()
    ctx = await m()
    after = time.time()
    assert isinstance(ctx["id"], str) and ctx["id"]
    assert (ctx["service"], ctx["method"], ctx["kind"]) == ("ctx", method, "call")
    assert isinstance(ctx["deadline"], float)
    assert before + 7.0 - 0.01 <= ctx["deadline"] <= after + 7.0 + 0.01
    assert ctx["headers"]["tenant"] == "a" and ctx["headers"]["x-trace"] == "t1"
    assert ctx["attempt"] == 1
    assert ctx["cancelled"] is False
    if method == "ainfo":
        assert ctx["before"] == {k: v for k, v in ctx.items() if k != "before"}   # after an await


async def test_two_calls_have_different_ids(open_bus):
    _, client = await _ctx(open_bus)
    info = client.proxy("ctx").info
    assert (await info())["id"] != (await info())["id"]


async def test_a_cast_s_context_id_is_the_id_the_cast_returned(open_bus):
    node, client = await _ctx(open_bus)
    mid = client.proxy("ctx").info.options(headers={"tenant": "b"}).cast()
    assert isinstance(mid, str)
    await eventually(lambda: len(node.seen) == 1, what="the cast ran")
    (ctx,) = node.seen
    assert (ctx["id"], ctx["service"], ctx["method"], ctx["kind"]) == (mid, "ctx", "info", "cast")
    assert ctx["headers"]["tenant"] == "b"
    assert ctx["attempt"] == 1 and ctx["cancelled"] is False


async def test_a_retried_task_sees_its_attempt_number(open_bus):
    node, client = await _ctx(open_bus)
    mid = client.proxy("ctx").flaky.cast("job")
    await eventually(lambda: len(node.seen) == 2, what="the retry ran")
    assert [c["attempt"] for c in node.seen] == [1, 2]
    assert all(c["label"] == "job" and c["method"] == "flaky" and c["service"] == "ctx" for c in node.seen)
    assert node.seen[0]["id"] == mid


async def test_an_event_handler_sees_an_event_context(open_bus):
    node, client = await _ctx(open_bus)
    client.publish("ctx.hello", {"n": 1})
    await eventually(lambda: len(node.seen) == 1, what="the event handler ran")
    (ctx,) = node.seen
    assert (ctx["kind"], ctx["topic"]) == ("event", "ctx.hello")
    assert isinstance(ctx["id"], str) and ctx["id"] and ctx["cancelled"] is False


async def test_a_nested_call_has_its_own_context_and_the_outer_one_is_kept(open_bus):
    _, client = await _ctx(open_bus)
    got = await client.proxy("ctx", timeout=20).outer()
    assert got["before"] == got["after"]
    assert got["before"]["method"] == "outer" and got["inner"]["method"] == "info"
    assert got["inner"]["id"] != got["before"]["id"]


async def test_outside_a_handler_current_raises_runtime_error(open_bus):
    with pytest.raises(RuntimeError):
        vertebra.current()
    _, client = await _ctx(open_bus)
    await client.proxy("ctx").info()
    with pytest.raises(RuntimeError):    # not after a call either (nothing leaks to the caller)
        vertebra.current()
    errors: list[BaseException] = []

    def in_a_thread() -> None:
        try:
            vertebra.current()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=in_a_thread)
    t.start()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


def test_context_through_the_sync_api(sync_bus):
    node = Ctx()
    sync_bus("ctx").serve(node)
    p = sync_bus("client").proxy("ctx", timeout=9.0)
    ctx = p.info.options(headers={"tenant": "s"})()
    assert (ctx["method"], ctx["kind"], ctx["headers"]["tenant"], ctx["attempt"]) == ("info", "call", "s", 1)
    mid = p.info.cast()
    wait_sync(lambda: len(node.seen) == 2, what="the cast ran")
    assert node.seen[1]["id"] == mid and node.seen[1]["kind"] == "cast"
    with pytest.raises(RuntimeError):
        vertebra.current()
