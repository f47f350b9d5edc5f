"""Streaming: a generator (or async generator) handler streams its items to the caller,
``proxy.m.stream(...)``; the node never runs more than the window ahead of the consumer;
a consumer that stops early cancels the generator on the node; the same on every transport."""

from __future__ import annotations

import asyncio
import time

import pytest

import vertebra

from .services import Streamer, chunk
from .util import eventually, wait_sync

WINDOW = 4
GENERATORS = ["tracked", "atracked"]      # a sync generator (thread pool), an async one (loop)


async def _drain(stream, into: list) -> None:
    """Append every item of an async stream to ``into`` (what came before an error stays)."""
    async for item in stream:
        into.append(item)  # noqa: PERF401 (the items before an exception are the point)


def _drain_sync(stream, into: list) -> None:
    """:func:`_drain` for a sync stream."""
    for item in stream:
        into.append(item)  # noqa: PERF402


async def _streamer(open_bus, **client_options) -> tuple[Streamer, vertebra.AsyncBus]:
    node = Streamer()
    await (await open_bus("streamer")).serve(node)
    return node, await open_bus("client", **client_options)


async def test_a_generator_streams_its_items_in_order(open_bus):
    _, client = await _streamer(open_bus)
    p = client.proxy("streamer", timeout=30)
    assert [x async for x in p.count.stream(100)] == list(range(100))
    assert [x async for x in p.acount.stream(100)] == list(range(100))
    assert [x async for x in p.count.stream(0)] == []


async def test_a_plain_call_of_a_generator_returns_the_list_of_its_items(open_bus):
    _, client = await _streamer(open_bus)
    p = client.proxy("streamer", timeout=30)
    assert await p.count(5) == [0, 1, 2, 3, 4]
    assert await p.acount(3) == [0, 1, 2]
    assert await p.count(0) == []


async def test_streaming_a_plain_handler_gives_its_one_result_as_one_item(open_bus):
    _, client = await _streamer(open_bus)
    p = client.proxy("streamer", timeout=30)
    assert [x async for x in p.listed.stream(3)] == [[0, 1, 2]]    # a list is one item


async def test_stream_with_options(open_bus):
    _, client = await _streamer(open_bus)
    m = client.proxy("streamer").count.options(timeout=20, headers={"tenant": "a"})
    assert [x async for x in m.stream(10)] == list(range(10))


@pytest.mark.parametrize("method", GENERATORS)
async def test_the_node_runs_no_more_than_the_window_ahead_of_a_slow_consumer(open_bus, method):
    node, client = await _streamer(open_bus, stream_window=WINDOW)
    got: list[int] = []
    async for item in client.proxy("streamer", timeout=60)[method].stream("slow", 200):
        got.append(item)
        if len(got) in (6, 50):              # the consumer pauses here (multiples of W/2)
            consumed = len(got)
            await eventually(lambda: node.produced.get("slow", 0) >= consumed + WINDOW // 2,
                             what=f"the node filling its window (made {node.produced})")
            await asyncio.sleep(0.5)         # room for a node without flow control to run on
            made = node.produced["slow"]
            assert made <= consumed + WINDOW + 1, f"{made} made while {consumed} consumed"
    assert got == list(range(200))
    await eventually(lambda: node.closed == ["slow"], what="the generator ended")


async def test_the_default_window_is_32(open_bus):
    node, client = await _streamer(open_bus)
    got: list[int] = []
    async for item in client.proxy("streamer", timeout=60).tracked.stream("default", 500):
        got.append(item)
        if len(got) == 64:
            await eventually(lambda: node.produced.get("default", 0) >= 64 + 16,
                             what=f"the node filling its window (made {node.produced})")
            await asyncio.sleep(0.5)
            assert node.produced["default"] <= 64 + 32 + 1
    assert got == list(range(500))


@pytest.mark.parametrize("method", GENERATORS)
async def test_a_consumer_that_breaks_early_cancels_the_generator_on_the_node(open_bus, method):
    node, client = await _streamer(open_bus, stream_window=WINDOW)
    p = client.proxy("streamer", timeout=60)
    got: list[int] = []
    async for item in p[method].stream("early", 100_000):
        got.append(item)
        if len(got) == 3:
            break
    assert got == [0, 1, 2]
    await eventually(lambda: "early" in node.closed, what="the generator's finally ran on the node")
    assert node.produced["early"] < 100_000           # closed, not run to its end
    assert [x async for x in p.count.stream(3)] == [0, 1, 2]    # and the node streams on


async def test_a_consumer_that_closes_the_async_stream_cancels_the_generator(open_bus):
    node, client = await _streamer(open_bus, stream_window=WINDOW)
    stream = client.proxy("streamer", timeout=60).tracked.stream("aclosed", 100_000)
    assert await anext(stream) == 0
    assert await anext(stream) == 1
    await stream.aclose()
    await eventually(lambda: "aclosed" in node.closed, what="the generator's finally ran on the node")
    assert node.produced["aclosed"] < 100_000


@pytest.mark.parametrize("method", ["boom", "aboom"])
async def test_an_exception_in_the_generator_reaches_the_consumer_after_the_items(open_bus, method):
    _, client = await _streamer(open_bus)
    got: list[int] = []
    with pytest.raises(vertebra.RemoteError) as info:
        await _drain(client.proxy("streamer", timeout=30)[method].stream(5), got)
    assert got == [0, 1, 2, 3, 4]
    assert (info.value.type, info.value.message) == ("ValueError", "boom after 5")
    with pytest.raises(vertebra.RemoteError):                   # a plain call: the error
        await client.proxy("streamer", timeout=30)[method](2)


async def test_200_chunks_of_64_kib_arrive_intact_and_in_order(open_bus):
    _, client = await _streamer(open_bus)
    n, size = 200, 64 * 1024
    i = 0
    async for piece in client.proxy("streamer", timeout=120).chunks.stream(n, size):
        assert type(piece) is bytes and len(piece) == size, (i, type(piece), len(piece))
        assert piece == chunk(i, size), f"chunk {i} differs"
        i += 1
    assert i == n


async def test_concurrent_streams_do_not_mix(open_bus):
    _, client = await _streamer(open_bus, stream_window=WINDOW)
    p = client.proxy("streamer", timeout=60)

    async def take(method: str, n: int) -> list[int]:
        return [x async for x in p[method].stream(n)]

    a, b, c = await asyncio.gather(take("count", 300), take("acount", 200), take("count", 77))
    assert (a, b, c) == (list(range(300)), list(range(200)), list(range(77)))


async def test_a_stream_past_its_deadline_raises_call_timeout_and_closes_the_generator(open_bus):
    node, client = await _streamer(open_bus)
    got: list[int] = []
    with pytest.raises(vertebra.CallTimeout):
        await _drain(client.proxy("streamer").ticks.options(timeout=1.0).stream("late", 0.05), got)
    assert got == list(range(len(got)))
    await eventually(lambda: "late" in node.closed, what="the node closed the generator at the deadline")
    assert node.produced["late"] < 100_000


async def test_streaming_an_unknown_method_is_unreachable(open_bus):
    _, client = await _streamer(open_bus)
    with pytest.raises(vertebra.Unreachable, match="no method"):
        async for _ in client.proxy("streamer", timeout=10).no_such_method.stream(1):
            pass
    assert [x async for x in client.proxy("streamer").count.stream(2)] == [0, 1]


# -- the sync API ----------------------------------------------------------------------


def test_sync_stream_is_an_iterator(sync_bus):
    sync_bus("streamer").serve(Streamer())
    p = sync_bus("client").proxy("streamer", timeout=30)
    assert list(p.count.stream(50)) == list(range(50))
    assert list(p.acount.stream(50)) == list(range(50))
    assert p.count(4) == [0, 1, 2, 3]
    got: list[int] = []
    with pytest.raises(vertebra.RemoteError) as info:
        _drain_sync(p.boom.stream(3), got)
    assert got == [0, 1, 2] and info.value.type == "ValueError"


def test_sync_consumer_that_closes_or_breaks_cancels_the_generator(sync_bus):
    node = Streamer()
    sync_bus("streamer").serve(node)
    p = sync_bus("client", stream_window=WINDOW).proxy("streamer", timeout=60)
    stream = p.tracked.stream("closed", 100_000)
    assert [next(stream), next(stream), next(stream)] == [0, 1, 2]
    stream.close()
    wait_sync(lambda: "closed" in node.closed, what="close() ended the generator on the node")
    for item in p.atracked.stream("broken", 100_000):
        if item == 2:
            break
    wait_sync(lambda: "broken" in node.closed, what="break ended the generator on the node")
    assert node.produced["closed"] < 100_000 and node.produced["broken"] < 100_000


def test_sync_slow_consumer_holds_the_node_to_the_window(sync_bus):
    node = Streamer()
    sync_bus("streamer").serve(node)
    p = sync_bus("client", stream_window=WINDOW).proxy("streamer", timeout=60)
    got: list[int] = []
    for item in p.tracked.stream("sync-slow", 100):
        got.append(item)
        if len(got) == 10:
            # (how far ahead the node may be depends on the batches the iterator fetched,
            # so no lower bound here: the async tests above have one)
            time.sleep(0.5)                  # room for a node without flow control to run on
            assert node.produced["sync-slow"] <= 10 + WINDOW + 1
    assert got == list(range(100))
