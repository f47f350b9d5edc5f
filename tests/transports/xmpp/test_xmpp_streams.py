"""Streamed calls at the transport level: ``item``/``beat`` envelopes in headline messages
to the caller, ahead of the final IQ answer; a replica that goes away mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.util import eventually as wait_for
from vertebra.transports.xmpp import XmppTransport, stanzas
from vertebra.wire.codec import CODECS
from vertebra.wire.envelope import STREAM_HEADER, Envelope
from vertebra.wire.errors import ProtocolError
from vertebra.wire.info import ServiceInfo

from .streamer import start, streaming


async def eventually(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """This file's bound (20.0 s) on the one polling helper of the test suite."""
    await wait_for(cond, timeout, what)


class Caller:
    """A caller transport recording every answer, per call id."""

    def __init__(self) -> None:
        self.answers: dict[str, list[Envelope]] = {}
        self.t: XmppTransport | None = None

    def on_answer(self, env: Envelope) -> None:
        self.answers.setdefault(env.re, []).append(env)

    async def stream(self, method: str = "m", window: int = 1000, timeout: float = 60) -> str:
        assert self.t is not None
        env = Envelope("call", service="calc", method=method, headers={STREAM_HEADER: str(window)},
                       deadline=time.time() + timeout)
        await self.t.send(env)
        return env.id

    def items(self, call_id: str) -> list[Any]:
        return [a.seq for a in self.answers.get(call_id, []) if a.kind == "item"]

    def final(self, call_id: str) -> Envelope | None:
        ends = [a for a in self.answers.get(call_id, []) if a.kind in ("reply", "error")]
        assert len(ends) <= 1, ends
        return ends[0] if ends else None


@pytest.fixture
async def transports(ns) -> AsyncIterator[Callable[..., Any]]:
    """``await transports(role, on_answer=None)`` -> a connected XmppTransport."""
    made: list[XmppTransport] = []

    async def factory(role: str, on_answer: Callable[[Envelope], None] | None = None,
                      **params: str) -> XmppTransport:
        t = await start(ns(role, **params), on_answer)
        made.append(t)
        return t
    yield factory
    for t in reversed(made):
        with contextlib.suppress(Exception):
            await t.close()


async def caller_and_node(transports, handler) -> tuple[Caller, XmppTransport]:
    node = await transports("calc")
    await node.serve(ServiceInfo("calc"), handler)
    c = Caller()
    c.t = await transports("client", c.on_answer)
    await eventually(lambda: c.t.directory.has_replica("calc"), what="the caller sees calc")
    return c, node


async def test_items_and_beats_come_in_order_before_the_final_reply(transports):
    c, _node = await caller_and_node(transports, streaming(300, size=2000))
    ids = [await c.stream() for _ in range(8)]            # streams interleaved on one stream
    await eventually(lambda: all(c.final(i) is not None for i in ids), what="all answered")
    for i in ids:
        answers = c.answers[i]
        assert [a.kind for a in answers] == ["beat", "item"] * 300 + ["reply"]
        assert c.items(i) == list(range(300))              # none lost behind the reply
        assert [a.seq for a in answers if a.kind == "beat"] == list(range(300))
        assert answers[-1].result == 300
        assert answers[1].result == [0, "x" * 2000]
    assert c.t.outgoing.out == {}


async def test_the_last_item_is_never_lost_behind_the_final_reply(transports):
    c, _node = await caller_and_node(transports, streaming(1))
    for _ in range(200):                       # item and reply back to back, every time
        call_id = await c.stream()
        await eventually(lambda: c.final(call_id) is not None, what="answered")
        assert [a.kind for a in c.answers[call_id]] == ["beat", "item", "reply"]


async def test_an_item_keeps_the_call_in_flight_until_the_final_answer(transports):
    release = asyncio.Event()
    c, node = await caller_and_node(transports, streaming(3, before_final=release.wait))
    call_id = await c.stream()
    await eventually(lambda: c.items(call_id) == [0, 1, 2], what="three items")
    assert call_id in c.t.outgoing.out and c.final(call_id) is None
    assert c.t.outgoing.per_target[node.jid] == 1          # still counted against its replica
    release.set()
    await eventually(lambda: c.final(call_id) is not None, what="the final reply")
    assert c.final(call_id).kind == "reply" and call_id not in c.t.outgoing.out


async def test_an_oversized_item_raises_protocol_error_on_the_node(transports):
    errors: list[Exception] = []
    c, _node = await caller_and_node(transports, streaming(2, size=node_max(), errors=errors))
    call_id = await c.stream()
    await eventually(lambda: c.final(call_id) is not None, what="answered")
    assert len(errors) == 1 and isinstance(errors[0], ProtocolError)
    assert c.items(call_id) == []                           # nothing of it was sent
    assert c.final(call_id).kind == "error"
    assert c.final(call_id).error["type"] == "ProtocolError"


def node_max() -> int:
    return XmppTransport.capabilities.max_message_size


async def test_items_from_anyone_but_the_callee_are_ignored(transports):
    release = asyncio.Event()
    c, _node = await caller_and_node(transports, streaming(1, before_final=release.wait))
    call_id = await c.stream()
    await eventually(lambda: c.items(call_id) == [0], what="the real item")
    intruder = await transports("intruder")
    forged = Envelope("item", re=call_id, seq=1, result="forged")
    intruder.send_xml(stanzas.answer_message(c.t.jid, CODECS["json"].encode(forged)))
    # a ping sent after it on the same stream: answered once the caller has seen the item
    await intruder.request("get", f"<ping xmlns='{stanzas.NS_PING}'/>", to=c.t.jid)
    release.set()
    await eventually(lambda: c.final(call_id) is not None, what="the final reply")
    assert c.items(call_id) == [0]


async def test_a_stream_whose_replica_goes_before_its_first_item_moves_to_another(transports):
    silent = await transports("calc")
    await silent.serve(ServiceInfo("calc"), streaming(0, before_final=asyncio.Event().wait))
    c = Caller()
    c.t = await transports("client", c.on_answer)
    await eventually(lambda: c.t.directory.has_replica("calc"), what="the caller sees calc")
    call_id = await c.stream()
    await eventually(lambda: bool(silent.serving.inflight), what="the call on the first replica")
    other = await transports("calc")
    await other.serve(ServiceInfo("calc"), streaming(3))
    await silent.close()
    await eventually(lambda: c.final(call_id) is not None, what="answered")
    assert c.items(call_id) == [0, 1, 2] and c.final(call_id).kind == "reply"


async def test_a_replica_killed_mid_stream_answers_unreachable(transports, ns, tmp_path):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("streamer.py")),
                             ns("calc"), str(ready)], cwd=str(Path(__file__).parents[3]))
    try:
        await eventually(lambda: ready.exists(), what="the streaming node up")
        c = Caller()
        c.t = await transports("client", c.on_answer)
        await eventually(lambda: c.t.directory.has_replica("calc"), what="the caller sees calc")
        call_id = await c.stream(timeout=300)
        await eventually(lambda: len(c.items(call_id)) >= 5, what="a few items")
        other = await transports("calc")              # a replica it could move to: it must not
        await other.serve(ServiceInfo("calc"), streaming(3))
        await eventually(lambda: sum("calc" in p.services for p in c.t.directory.peers.values())
                         == 2, what="the caller sees both replicas")
        os.kill(proc.pid, signal.SIGKILL)
        await eventually(lambda: c.final(call_id) is not None, 10, "answered after the kill")
        final = c.final(call_id)
        assert final.kind == "error" and final.error["code"] == "unreachable", final
        assert c.answers[call_id][-1] is final
        assert c.items(call_id) == list(range(len(c.items(call_id))))
        assert call_id not in c.t.outgoing.out and not c.t.outgoing.per_target
    finally:
        proc.kill()
        proc.wait()


async def test_the_callers_connection_dropping_mid_stream_answers_unreachable(transports):
    c, _node = await caller_and_node(transports, streaming(None, pause=0.02))
    call_id = await c.stream(timeout=300)
    await eventually(lambda: len(c.items(call_id)) >= 3, what="a few items")
    c.t.drop_connection()
    await eventually(lambda: c.final(call_id) is not None, what="answered")
    assert c.final(call_id).error["code"] == "unreachable"
    await eventually(lambda: c.t.ready, what="the caller back")
    again = await c.stream(timeout=300)                  # and streams work again
    await eventually(lambda: len(c.items(again)) >= 3, what="items of a new stream")
