"""The node side of streamed calls (docs/PROTOCOL.md §6d), driven through NodeRuntime:
items under credit, beats, the final answer, errors, closing the generator."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.conformance.util import eventually
from tests.unit.nodeharness import control, deliver, message, runtime
from vertebra import Node, rpc
from vertebra.nodes.context import current


class Gen(Node):
    name = "gen"

    def __init__(self) -> None:
        self.made: list[int] = []
        self.closed: list[str] = []
        self.gate = threading.Event()
        self.agate = asyncio.Event()
        self.contexts: list[str] = []

    @rpc
    def count(self, n: int) -> Iterator[int]:
        try:
            for i in range(n):
                self.made.append(i)
                yield i
        finally:
            self.closed.append("count")

    @rpc
    async def acount(self, n: int) -> AsyncIterator[int]:
        try:
            for i in range(n):
                self.made.append(i)
                await asyncio.sleep(0)
                yield i
        finally:
            self.closed.append("acount")

    @rpc
    def boom(self, n: int) -> Iterator[int]:
        yield from range(n)
        raise ValueError(f"boom after {n}")

    @rpc
    async def aboom(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise ValueError(f"boom after {n}")

    @rpc
    def plain(self, n: int) -> list[int]:
        return list(range(n))

    @rpc
    async def aplain(self, n: int) -> int:
        return n * 2

    @rpc
    def iterator(self, n: int) -> Iterator[int]:
        return iter(range(n))          # not a generator function: still an iterator

    @rpc
    def sizes(self, *sizes: int) -> Iterator[str]:
        try:
            for s in sizes:
                yield "x" * s
        finally:
            self.closed.append("sizes")

    @rpc
    def slow(self) -> Iterator[str]:
        yield "first"
        self.gate.wait(30)              # blocks its pool thread until the test opens it
        yield "second"

    @rpc
    async def aslow(self) -> AsyncIterator[str]:
        yield "first"
        await self.agate.wait()
        yield "second"

    @rpc
    def slow_plain(self) -> str:
        """A plain handler that takes its time before its one result."""
        self.gate.wait(30)
        return "done"

    @rpc
    async def aslow_plain(self) -> str:
        await self.agate.wait()
        return "done"

    @rpc
    def whoami(self) -> Iterator[str]:
        for _ in range(2):
            ctx = current()
            self.contexts.append(threading.current_thread().name)
            yield f"{ctx.service}.{ctx.method}:{ctx.kind}"


SYNC_ASYNC = pytest.mark.parametrize("method", ["count", "acount"])


@SYNC_ASYNC
async def test_items_come_in_order_then_a_final_reply_that_counts_them(method):
    async with runtime(Gen()) as rt:
        inc = await deliver(rt, message("gen", method, 10, window=100))
        await eventually(lambda: inc.settled)
        assert inc.items == list(range(10))
        final = inc.final
        assert final is not None and final.kind == "reply"
        assert (final.result, final.seq, final.re) == (10, 10, inc.envelope.id)
        assert inc.acked and rt.counts["calls"] == 1


@SYNC_ASYNC
async def test_an_empty_generator_is_an_empty_stream(method):
    async with runtime(Gen()) as rt:
        inc = await deliver(rt, message("gen", method, 0, window=4))
        await eventually(lambda: inc.settled)
        assert inc.items == []
        assert inc.final is not None and (inc.final.kind, inc.final.result, inc.final.seq) == ("reply", 0, 0)


@SYNC_ASYNC
async def test_the_node_never_runs_past_its_credit_and_beats_while_it_waits(method):
    node = Gen()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("gen", method, 100, window=4))
        await eventually(lambda: len(inc.items) == 4)
        await eventually(lambda: len(inc.beats) >= 1, what="a beat while waiting for credit")
        assert all(b.seq == 4 and b.re == inc.envelope.id for b in inc.beats)
        assert len(inc.items) == 4 and node.made == [0, 1, 2, 3, 4]  # item 4 made, held back
        await control(rt, {"op": "credit", "id": inc.envelope.id, "upto": 6})
        await eventually(lambda: len(inc.items) == 6)
        await control(rt, {"op": "credit", "id": inc.envelope.id, "upto": 5})   # smaller: ignored
        await control(rt, {"op": "credit", "id": inc.envelope.id, "upto": 6})   # the same: no-op
        await eventually(lambda: len(inc.beats) >= 2, what="another beat, still at 6")
        assert len(inc.items) == 6 and node.made == list(range(7)) and inc.final is None
        await control(rt, {"op": "credit", "id": inc.envelope.id, "upto": 1000})
        await eventually(lambda: inc.settled)
        assert inc.items == list(range(100)) and inc.final is not None and inc.final.result == 100


@pytest.mark.parametrize("method", ["slow", "aslow"])
async def test_a_slow_generator_gets_beats_between_items(method):
    node = Gen()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("gen", method, window=8))
        await eventually(lambda: len(inc.beats) >= 1, what="a beat while the generator works")
        assert inc.items == ["first"] and inc.beats[0].seq == 1
        node.gate.set()
        node.agate.set()
        await eventually(lambda: inc.settled)
        assert inc.items == ["first", "second"] and inc.final is not None and inc.final.result == 2


@pytest.mark.parametrize("method", ["slow_plain", "aslow_plain"])
async def test_a_stream_beats_while_its_handler_is_still_running(method):
    node = Gen()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("gen", method, window=8))
        await eventually(lambda: len(inc.beats) >= 1, what="a beat before the handler returned")
        assert inc.items == [] and inc.beats[0].seq == 0 and inc.final is None
        node.gate.set()
        node.agate.set()
        await eventually(lambda: inc.settled)
        assert inc.items == ["done"] and inc.final is not None and inc.final.result == 1


@pytest.mark.parametrize("method", ["boom", "aboom"])
async def test_an_exception_in_the_generator_ends_the_stream_with_an_error_after_the_items(method):
    async with runtime(Gen()) as rt:
        inc = await deliver(rt, message("gen", method, 3, window=10))
        await eventually(lambda: inc.settled)
        assert inc.items == [0, 1, 2]
        final = inc.final
        assert final is not None and final.kind == "error" and final.error is not None
        assert (final.error["code"], final.error["type"], final.error["message"]) == \
            ("remote", "ValueError", "boom after 3")
        assert final.seq == 3 and "raise ValueError" in final.error["traceback"]
        assert inc.acked and rt.counts["errors"] == 1


async def test_an_oversized_item_ends_the_stream_with_a_protocol_error_and_closes_the_generator():
    node = Gen()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("gen", "sizes", 1, 2, 500, 3, window=10), max_item=100)
        await eventually(lambda: inc.settled)
        assert inc.items == ["x", "xx"]
        final = inc.final
        assert final is not None and final.kind == "error" and final.error is not None
        assert final.error["code"] == "protocol" and "item 2" in final.error["message"]
        assert final.seq == 2 and node.closed == ["sizes"]


async def test_a_plain_call_of_a_generator_returns_the_list_of_its_items():
    async with runtime(Gen()) as rt:
        for method in ("count", "acount"):
            inc = await deliver(rt, message("gen", method, 5))
            await eventually(lambda inc=inc: inc.settled)
            assert [a.kind for a in inc.answers] == ["reply"]
            assert inc.answers[0].result == [0, 1, 2, 3, 4] and inc.answers[0].seq is None


async def test_a_stream_of_a_handler_that_returns_one_value_is_that_value_as_item_0():
    async with runtime(Gen()) as rt:
        for method, arg, item in (("plain", 3, [0, 1, 2]), ("aplain", 4, 8)):
            inc = await deliver(rt, message("gen", method, arg, window=2))
            await eventually(lambda inc=inc: inc.settled)
            assert inc.items == [item]
            assert inc.final is not None and (inc.final.result, inc.final.seq) == (1, 1)


async def test_an_iterator_that_is_not_a_generator_streams_too():
    async with runtime(Gen()) as rt:
        inc = await deliver(rt, message("gen", "iterator", 3, window=2))
        await control(rt, {"op": "credit", "id": inc.envelope.id, "upto": 10})
        await eventually(lambda: inc.settled)
        assert inc.items == [0, 1, 2] and inc.final is not None and inc.final.result == 3


async def test_a_sync_generator_runs_in_the_pool_with_the_handler_context():
    node = Gen()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("gen", "whoami", window=4))
        await eventually(lambda: inc.settled)
        assert inc.items == ["gen.whoami:call"] * 2
        assert all(name.startswith("vertebra-gen") for name in node.contexts), node.contexts


@SYNC_ASYNC
async def test_a_cancel_closes_the_generator_and_ends_the_stream_cancelled(method):
    node = Gen()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("gen", method, 100, window=3))
        await eventually(lambda: len(inc.items) == 3)
        await control(rt, {"op": "cancel", "id": inc.envelope.id})
        await eventually(lambda: inc.settled)
        final = inc.final
        assert final is not None and final.kind == "error" and final.error is not None
        assert (final.error["code"], final.error["type"], final.seq) == ("cancelled", "Cancelled", 3)
        assert node.closed == [method] and inc.acked and rt.counts["cancelled"] == 1
        again = await deliver(rt, message("gen", method, 2, window=3))     # it serves on
        await eventually(lambda: again.settled)
        assert again.items == [0, 1]


@pytest.mark.parametrize("method", ["slow", "aslow"])
async def test_a_cancel_while_the_generator_works_stops_it(method):
    node = Gen()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("gen", method, window=3))
        await eventually(lambda: inc.items == ["first"])
        await control(rt, {"op": "cancel", "id": inc.envelope.id})
        if method == "slow":            # the pool thread is inside next(): it must finish first
            await asyncio.sleep(0.05)
            assert not inc.settled
            node.gate.set()
        await eventually(lambda: inc.settled)
        assert inc.final is not None and inc.final.error is not None
        assert inc.final.error["code"] == "cancelled" and inc.items == ["first"]


@SYNC_ASYNC
async def test_the_deadline_ends_a_stream_with_a_timeout_and_closes_the_generator(method):
    node = Gen()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("gen", method, 100, window=2, timeout=0.3))
        await eventually(lambda: inc.settled)
        final = inc.final
        assert final is not None and final.kind == "error" and final.error is not None
        assert (final.error["code"], final.error["type"], final.seq) == ("timeout", "CallTimeout", 2)
        assert inc.items == [0, 1] and node.closed == [method] and rt.counts["expired"] == 1


async def test_streams_hold_concurrency_slots_like_calls():
    class One(Gen):
        name = "gen"
        concurrency = 1

    node = One()
    async with runtime(node) as rt:
        first = await deliver(rt, message("gen", "count", 10, window=2))
        second = await deliver(rt, message("gen", "count", 3, window=10))
        await eventually(lambda: len(first.items) == 2)
        await eventually(lambda: len(first.beats) >= 1)
        assert second.answers == [] and node.made == [0, 1, 2]    # waits for the slot
        await control(rt, {"op": "credit", "id": first.envelope.id, "upto": 100})
        await eventually(lambda: second.settled)
        assert first.items == list(range(10)) and second.items == [0, 1, 2]


async def test_a_bad_window_is_a_protocol_error():
    async with runtime(Gen()) as rt:
        for window in ("lots", "0", "-3", "²"):
            env = message("gen", "count", 3)
            env.headers["stream"] = window
            bad = await deliver(rt, env)
            await eventually(lambda bad=bad: bad.settled)
            assert bad.final is not None and bad.final.error is not None
            assert bad.final.error["code"] == "protocol" and bad.items == []


async def test_malformed_control_messages_are_logged_and_ignored(caplog):
    caplog.set_level(logging.WARNING, logger="vertebra.node")
    async with runtime(Gen()) as rt:
        inc = await deliver(rt, message("gen", "count", 10, window=2))
        await eventually(lambda: len(inc.items) == 2)
        mid = inc.envelope.id
        for bad in (None, "cancel", [], {"op": "cancel"}, {"op": "cancel", "id": 7},
                    {"op": "credit", "id": mid}, {"op": "credit", "id": mid, "upto": "9"},
                    {"op": "credit", "id": mid, "upto": True},
                    {"op": "credit", "id": mid, "upto": -1}, {"op": "explode", "id": "x"}):
            await control(rt, bad)
        assert len([r for r in caplog.records if "malformed control" in r.getMessage()]) == 10
        assert len(inc.items) == 2 and not inc.settled              # the stream is untouched
        await control(rt, {"op": "credit", "id": "someone-else's", "upto": 10})   # not ours: ignored
        await control(rt, {"op": "credit", "id": inc.envelope.id, "upto": 10})
        await eventually(lambda: inc.settled)
        assert inc.items == list(range(10))
