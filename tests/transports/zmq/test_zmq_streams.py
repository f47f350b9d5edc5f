"""Streamed calls (ITEM frames) and queue priorities through a real hub, transport level."""

from __future__ import annotations

import asyncio
import time

import pytest

from vertebra.transports.base import Incoming
from vertebra.transports.zmq import ZmqTransport
from vertebra.wire.envelope import STREAM_HEADER, Envelope
from vertebra.wire.errors import ProtocolError
from vertebra.wire.info import ServiceInfo

from .conftest import Client, eventually


def _stream_call(service: str, timeout: float = 30.0) -> Envelope:
    return Envelope("call", service=service, method="m", args=[], headers={STREAM_HEADER: "32"},
                    deadline=time.time() + timeout)


async def _answers_to(client: Client, call: Envelope, until: set[str],
                      timeout: float = 20.0) -> list[Envelope]:
    """The answers to ``call`` in the order they came, up to the first of a kind in ``until``."""
    got: list[Envelope] = []
    while True:
        env = await asyncio.wait_for(client.answers.get(), timeout)
        if env.re == call.id:
            got.append(env)
            if env.kind in until:
                return got


async def test_items_and_beats_reach_the_caller_in_order_before_the_reply(open_client):
    node = await open_client()
    release = asyncio.Event()

    async def handle(inc: Incoming) -> None:
        env = inc.envelope
        if env.args:                                   # the plain call sent meanwhile
            await inc.reply(env.answer("plain"))
            return
        for seq in range(3):
            await inc.reply(env.item(seq, f"chunk {seq}"))
        await inc.reply(env.beat(3))
        await release.wait()
        await inc.reply(env.item(3, "chunk 3"))
        await inc.reply(env.answer(4))

    handlers: set[asyncio.Task[None]] = set()

    async def serve(inc: Incoming) -> None:          # not on the receiving loop: it waits
        task = asyncio.create_task(handle(inc))
        handlers.add(task)
        task.add_done_callback(handlers.discard)

    await node.t.serve(ServiceInfo("files"), serve, prefetch=1)
    client = await open_client()
    call = _stream_call("files")
    await client.t.send(call)
    early = await _answers_to(client, call, {"beat"})
    # the items settled nothing: the node's one credit is still spent, so a second call waits
    other = await open_client()                      # its own answer queue
    plain = asyncio.create_task(other.call("files", "m", "x"))
    await asyncio.sleep(0.3)
    assert not plain.done()
    release.set()
    rest = await _answers_to(client, call, {"reply", "error"})
    assert [(e.kind, e.seq, e.result) for e in early + rest] == [
        ("item", 0, "chunk 0"), ("item", 1, "chunk 1"), ("item", 2, "chunk 2"), ("beat", 3, None),
        ("item", 3, "chunk 3"), ("reply", None, 4)]
    assert (await plain).result == "plain"


async def test_an_oversized_item_raises_and_the_stream_still_ends_with_an_error(hub, open_client):
    node = await open_client(hub.url + "?heartbeat=0.2&max_message_size=2000")
    raised: list[BaseException] = []

    async def handle(inc: Incoming) -> None:
        env = inc.envelope
        await inc.reply(env.item(0, "small"))
        try:
            await inc.reply(env.item(1, "x" * 5000))
        except ProtocolError as exc:
            raised.append(exc)
            await inc.reply(env.fail({"code": "protocol", "type": "ProtocolError", "message": str(exc)}))

    await node.t.serve(ServiceInfo("big"), handle, prefetch=1)
    client = await open_client()
    call = _stream_call("big")
    await client.t.send(call)
    answers = await _answers_to(client, call, {"reply", "error"})
    assert [e.kind for e in answers] == ["item", "error"] and answers[1].error["code"] == "protocol"
    assert len(raised) == 1 and "max_message_size" in str(raised[0])


@pytest.mark.slow
async def test_a_replica_killed_mid_stream_gives_the_caller_unreachable(hub, open_client, procs):
    worker = procs(hub.url + "?heartbeat=0.2", "ticker", "stream")
    await worker.wait_for("ready")
    client = await open_client()
    call = _stream_call("ticker", timeout=60)
    await client.t.send(call)
    for _ in range(3):
        await _answers_to(client, call, {"item"})
    worker.kill()                                    # SIGKILL, items sent, no final answer
    answers = await _answers_to(client, call, {"reply", "error"})
    assert answers[-1].kind == "error" and answers[-1].error["code"] == "unreachable"
    assert {e.kind for e in answers[:-1]} <= {"item"}


async def test_queued_tasks_reach_a_lone_worker_highest_priority_first(open_client):
    client = await open_client()
    priorities = [3, None, 9, 0, 5, 9, 1, None, 5, 7]   # None: no priority (0)
    for i, p in enumerate(priorities):
        await client.t.send(Envelope("task", service="jobs", method="m", args=[i], priority=p))
    got: list[int] = []

    async def record(inc: Incoming) -> None:
        got.append(inc.envelope.args[0])
        await inc.ack()

    worker = await open_client()                     # one worker, one delivery at a time
    await worker.t.serve(ServiceInfo("jobs"), record, prefetch=1)
    await eventually(lambda: len(got) == 10, 20, "all ten tasks delivered")
    assert got == sorted(range(10), key=lambda i: -(priorities[i] or 0))
    assert got == [2, 5, 9, 4, 8, 0, 6, 1, 3, 7]


async def test_a_priority_out_of_range_is_refused_before_sending(open_client):
    client = await open_client()
    with pytest.raises(ProtocolError, match="priority"):
        await client.t.send(Envelope("task", service="jobs", method="m", priority=12))


def test_zmq_says_it_orders_by_priority_and_leaves_delays_to_the_outbox():
    assert ZmqTransport.capabilities.priorities is True
    assert ZmqTransport.capabilities.holds_delayed is False
