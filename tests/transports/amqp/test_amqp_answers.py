"""Several answers per call on the amqp transport, against the real broker: a streamed
call's ``item`` and ``beat`` envelopes reach the caller over direct reply-to in the order
sent, the call is remembered until its final ``reply`` or ``error``, and an oversized item
is refused on the node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from tests.conformance.util import eventually as wait_for

from vertebra.transports.amqp import AmqpTransport
from vertebra.transports.base import Incoming
from vertebra.wire.codec import get_codec
from vertebra.wire.envelope import STREAM_HEADER, Envelope
from vertebra.wire.errors import ProtocolError, wire_error
from vertebra.wire.info import ServiceInfo

ITEMS = 300


async def eventually(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """This file's bound (20.0 s) on the one polling helper of the test suite."""
    await wait_for(cond, timeout, what)


@pytest.fixture
async def transports(ns):
    made: list[AmqpTransport] = []

    async def make(role: str, on_answer=lambda env: None, **params: str) -> AmqpTransport:
        t = AmqpTransport(ns(role, **params), get_codec("json"))
        await t.connect(on_answer)
        made.append(t)
        return t

    yield make
    for t in reversed(made):
        await t.close()


def stream_call(n: int) -> Envelope:
    return Envelope("call", service="streamer", method="read", args=[n],
                    deadline=time.time() + 60, headers={STREAM_HEADER: "32"})


async def test_items_and_beats_arrive_in_order_per_call_and_only_the_reply_ends_it(transports):
    release = asyncio.Event()

    async def handler(incoming: Incoming) -> None:
        env = incoming.envelope
        for seq in range(ITEMS):
            await incoming.reply(env.item(seq, {"call": env.args[0], "seq": seq}))
            if seq % 100 == 0:
                await incoming.reply(env.beat(seq + 1))
                await asyncio.sleep(0)          # let the three calls interleave
        await release.wait()
        if env.args[0] == 2:
            await incoming.reply(env.fail(wire_error("remote", "RuntimeError", "after the items")))
        else:
            await incoming.reply(env.answer(ITEMS))
        await incoming.ack()

    node = await transports("streamer")
    await node.serve(ServiceInfo("streamer"), handler, prefetch=4)
    answers: list[Envelope] = []
    caller = await transports("client", answers.append)
    calls = [stream_call(n) for n in range(3)]
    for call in calls:
        await caller.send(call)

    def of(call: Envelope) -> list[Envelope]:
        return [a for a in answers if a.re == call.id]

    await eventually(lambda: all(sum(a.kind == "item" for a in of(c)) == ITEMS for c in calls),
                     what=f"{ITEMS} items per call, got {len(answers)} answers")
    assert all(c.id in caller._calls._out for c in calls)      # not forgotten on an item
    release.set()
    await eventually(lambda: all(of(c)[-1:] and of(c)[-1].kind in ("reply", "error") for c in calls),
                     what="the final answers")
    for n, call in enumerate(calls):
        got = of(call)
        items = [a for a in got if a.kind == "item"]
        assert [a.seq for a in items] == list(range(ITEMS))
        assert [a.result for a in items] == [{"call": n, "seq": s} for s in range(ITEMS)]
        beats = [(i, a.seq) for i, a in enumerate(got) if a.kind == "beat"]
        # each beat comes right after the item it follows, carrying the count sent so far
        assert beats == [(s + s // 100 + 1, s + 1) for s in range(0, ITEMS, 100)]
        final = got[-1]
        assert len(got) == ITEMS + len(beats) + 1
        if n == 2:
            assert (final.kind, final.error["message"]) == ("error", "after the items")
        else:
            assert (final.kind, final.result) == ("reply", ITEMS)
        assert call.id not in caller._calls._out                # forgotten on the final one
    assert node.stats["malformed"] == 0 and caller.stats["malformed"] == 0


async def test_an_item_above_max_message_is_refused_on_the_node(transports):
    refused: list[str] = []

    async def handler(incoming: Incoming) -> None:
        env = incoming.envelope
        await incoming.reply(env.item(0, "small"))
        try:
            await incoming.reply(env.item(1, "x" * 5000))
        except ProtocolError as exc:
            refused.append(str(exc))
            await incoming.reply(env.fail(wire_error("protocol", "ProtocolError", "too big")))
        await incoming.ack()

    node = await transports("streamer", max_message="2048")
    await node.serve(ServiceInfo("streamer"), handler)
    answers: list[Envelope] = []
    caller = await transports("client", answers.append)
    call = stream_call(0)
    await caller.send(call)
    await eventually(lambda: any(a.kind == "error" for a in answers), what="the final error")
    assert [(a.kind, a.seq) for a in answers] == [("item", 0), ("error", None)]
    assert refused and "exceeds" in refused[0]
    assert call.id not in caller._calls._out
