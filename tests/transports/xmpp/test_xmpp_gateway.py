"""Every service at a stable address SERVICE@GATEWAY (an XEP-0114 component held by one bus
at a time): stock Jabber-RPC and raw envelope clients that join nothing, faultCodes,
answers in the codec of the call, load spreading over replicas, failover of the holder."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from slixmpp.exceptions import IqError

import vertebra
from tests.conformance.util import eventually as wait_for
from tests.servers import xmpp as xmpp_servers
from vertebra import Node, rpc
from vertebra.backoff import Backoff
from vertebra.transports.xmpp import gateway

from .nodes import Calc
from .test_xmpp_interop import rpc_call

GW = xmpp_servers.GATEWAY
NS_ENV = "urn:vertebra:envelope:1"


async def eventually(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """This file's bound (20.0 s) on the one polling helper of the test suite."""
    await wait_for(cond, timeout, what)


async def gateway_node(bus_for: Any, server: xmpp_servers.Server, node: Node | None = None,
                       **params: str) -> vertebra.AsyncBus:
    bus = await bus_for("calc", url_params={**server.gateway_params(), **params})
    await bus.serve(node or Calc())
    return bus


async def send_env(client: Any, to: str, env: dict[str, Any], codec: str = "json") -> tuple[str, Any]:
    """Send one envelope in an IQ set; (IQ type, (codec, decoded answer) or None, condition)."""
    data = msgpack.packb(env) if codec == "msgpack" else json.dumps(env).encode()
    iq = client.make_iq_set(ito=to)
    iq.append(ET.fromstring(f"<env xmlns='{NS_ENV}'>{base64.b64encode(data).decode()}</env>"))
    try:
        answer = await iq.send(timeout=10)
        kind, condition = "result", ""
    except IqError as exc:
        answer, kind, condition = exc.iq, "error", exc.iq["error"]["condition"]
    el = answer.xml.find(f"{{{NS_ENV}}}env")
    if el is None:
        return kind, (condition, None, None)
    raw = base64.b64decode(el.text or "")
    decoded = msgpack.unpackb(raw) if raw[:1] != b"{" else json.loads(raw)
    return kind, (condition, "json" if raw[:1] == b"{" else "msgpack", decoded)


def call(method: str, *args: Any, service: str = "calc") -> dict[str, Any]:
    return {"v": 1, "id": os.urandom(8).hex(), "kind": "call", "service": service,
            "method": method, "args": list(args)}


# -- Jabber-RPC: faultCodes -----------------------------------------------------------------

async def test_stock_jabber_rpc_client_calls_by_the_stable_jid(bus_for, xmpp_server, raw_client):
    node = await gateway_node(bus_for, xmpp_server)
    await eventually(lambda: node.transport.gateway.holding, what="the gateway held")
    stock = await raw_client()
    to = f"calc@{GW}"
    assert await rpc_call(stock, to, "add", 2, 3) == [5]
    assert await rpc_call(stock, to, "calc.add", 2, 40) == [42]
    for args in [(1,), (1, 2, 3)]:
        kind, fault = await rpc_call(stock, to, "add", *args)
        assert (kind, fault["code"]) == ("fault", 400), (args, fault)
        assert "TypeError" in fault["string"]
    kind, fault = await rpc_call(stock, to, "nosuch")
    assert (kind, fault["code"]) == ("fault", 404)
    kind, fault = await rpc_call(stock, to, "other.add", 1, 2)
    assert (kind, fault["code"]) == ("fault", 404)
    kind, fault = await rpc_call(stock, to, "typo", 1)      # the handler's own TypeError
    assert (kind, fault["code"]) == ("fault", 500) and "handler itself" in fault["string"]
    kind, fault = await rpc_call(stock, to, "fail", "boom")
    assert (kind, fault["code"]) == ("fault", 500) and "ValueError: boom" in fault["string"]
    with pytest.raises(IqError) as err:
        await rpc_call(stock, f"nobody@{GW}", "add", 1, 2)
    assert err.value.iq["error"]["condition"] == "item-not-found"


async def test_wrong_arguments_are_fault_400_at_a_replica_too(bus_for, raw_client):
    node = await bus_for("calc")
    await node.serve(Calc())
    stock = await raw_client()
    to = node.transport.jid
    for args in [(1,), (1, 2, 3)]:
        kind, fault = await rpc_call(stock, to, "calc.add", *args)
        assert (kind, fault["code"]) == ("fault", 400), (args, fault)
    kind, fault = await rpc_call(stock, to, "calc.typo", 1)
    assert (kind, fault["code"]) == ("fault", 500)
    assert await rpc_call(stock, to, "calc.add", 2, 3) == [5]


# -- envelopes by the stable JID; the codec of the answer ------------------------------------

async def test_envelopes_by_the_stable_jid_are_answered_in_the_codec_of_the_call(
        bus_for, xmpp_server, raw_client):
    node = await gateway_node(bus_for, xmpp_server)
    await eventually(lambda: node.transport.gateway.holding, what="the gateway held")
    stock = await raw_client()
    for to in (f"calc@{GW}", node.transport.jid):
        for codec in ("json", "msgpack"):
            kind, (_, answer_codec, reply) = await send_env(stock, to, call("add", 2, 3), codec)
            assert (kind, answer_codec, reply["kind"], reply["result"]) == \
                ("result", codec, "reply", 5), (to, codec, reply)
        kind, (condition, answer_codec, err) = await send_env(stock, to, call("nosuch"), "msgpack")
        assert (kind, condition, answer_codec) == ("error", "item-not-found", "msgpack")
        assert err["error"]["code"] == "unreachable"
        kind, (condition, _, err) = await send_env(stock, to, call("add", 1))
        assert (kind, err["error"]["type"]) == ("error", "TypeError")
    kind, (condition, answer_codec, err) = await send_env(
        stock, f"calc@{GW}", call("add", 1, 2, service="nobody"), "msgpack")
    assert (kind, condition, answer_codec) == ("error", "bad-request", "msgpack")
    kind, (condition, _, err) = await send_env(stock, f"nobody@{GW}",
                                               call("add", 1, 2, service="nobody"))
    assert (kind, condition, err["error"]["code"]) == ("error", "item-not-found", "unreachable")


async def test_a_vertebra_client_gets_msgpack_answers_to_msgpack_calls(bus_for):
    node = await bus_for("calc")
    await node.serve(Calc())
    seen: list[bytes] = []
    client = await bus_for(codec="msgpack")
    outgoing = client.transport.outgoing
    deliver = outgoing._deliver

    def spy(env: Any, data: bytes) -> None:
        seen.append(data[:1])
        deliver(env, data)
    outgoing._deliver = spy
    assert await client.proxy("calc").add(2, 3) == 5
    assert seen and seen[0][0] in range(0x80, 0x90), seen


async def test_casts_and_tasks_by_the_stable_jid_are_acknowledged(bus_for, xmpp_server, raw_client):
    calc = Calc()
    node = await gateway_node(bus_for, xmpp_server, calc)
    await eventually(lambda: node.transport.gateway.holding, what="the gateway held")
    stock = await raw_client()
    task = {"v": 1, "id": os.urandom(8).hex(), "kind": "task", "service": "calc",
            "method": "work", "args": ["via-gateway"]}
    kind, (_, _, body) = await send_env(stock, f"calc@{GW}", task)
    assert (kind, body) == ("result", None)       # the empty result: acknowledged, done
    assert calc.done == ["via-gateway"]


# -- discovery, presence ---------------------------------------------------------------------

async def test_the_gateway_answers_disco_ping_and_presence(bus_for, xmpp_server, raw_client):
    node = await gateway_node(bus_for, xmpp_server)
    await eventually(lambda: node.transport.gateway.holding, what="the gateway held")
    stock = await raw_client()

    async def ask(to: str, query: str) -> Any:
        iq = stock.make_iq_get(ito=to)
        iq.append(ET.fromstring(query))
        return (await iq.send(timeout=10)).xml

    items = await ask(GW, "<query xmlns='http://jabber.org/protocol/disco#items'/>")
    assert f"calc@{GW}" in {i.get("jid") for i in items.iter("{http://jabber.org/protocol/disco#items}item")}
    items = await ask(f"calc@{GW}", "<query xmlns='http://jabber.org/protocol/disco#items'/>")
    assert {"calc.add", "calc.work"} <= {i.get("node") for i in items.iter(
        "{http://jabber.org/protocol/disco#items}item")}
    info = await ask(f"calc@{GW}", "<query xmlns='http://jabber.org/protocol/disco#info'/>")
    assert "jabber:iq:rpc" in {f.get("var") for f in info.iter(
        "{http://jabber.org/protocol/disco#info}feature")}
    assert (await ask(f"calc@{GW}", "<ping xmlns='urn:xmpp:ping'/>")).get("type") == "result"
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_presence(p: Any) -> None:
        if p["from"].bare == f"calc@{GW}" and not seen.done():
            seen.set_result(p["type"])
    stock.add_event_handler("presence", on_presence)
    stock.send_presence()                        # available, so presence reaches it
    stock.send_presence(pto=f"calc@{GW}", ptype="subscribe")
    assert await asyncio.wait_for(seen, 10) == "available"
    info = next(s for s in await node.nodes() if s.name == "calc")
    assert info.extra["jid"] == f"calc@{GW}"


# -- replicas behind the stable JID ----------------------------------------------------------

class Who(Node):
    """Says which replica answered."""

    name = "calc"

    def __init__(self, tag: str) -> None:
        self.tag = tag

    @rpc
    async def who(self, delay: float = 0.0) -> str:
        """This replica's tag, after ``delay`` seconds."""
        await asyncio.sleep(delay)
        return self.tag


async def rpc_retrying(stock: Any, to: str, method: str, *args: Any, timeout: float = 20.0) -> Any:
    """A stock client's retry: IQ errors of type wait (no gateway or replica yet) are retried."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            return await rpc_call(stock, to, method, *args)
        except IqError as exc:
            if exc.iq["error"]["type"] != "wait" or loop.time() > end:
                raise
            await asyncio.sleep(0.05)


async def test_calls_spread_over_replicas_and_the_gateway_fails_over(bus_for, xmpp_server,
                                                                    raw_client, monkeypatch):
    # no periodic retries: only the holder leaving the room (or a bus rejoining it) makes
    # a standby try again, so this shows that presence is what drives the failover
    monkeypatch.setattr(gateway, "STANDBY", Backoff(base=3600, cap=3600, jitter=lambda: 1.0))
    a = await gateway_node(bus_for, xmpp_server, Who("a"))
    b = await gateway_node(bus_for, xmpp_server, Who("b"))
    await eventually(lambda: a.transport.gateway.holding or b.transport.gateway.holding,
                     what="one holds the gateway")
    await eventually(lambda: all(len(x.transport.directory.peers) == 2 for x in (a, b)),
                     what="both see both")
    assert not (a.transport.gateway.holding and b.transport.gateway.holding)
    holder, other = (a, b) if a.transport.gateway.holding else (b, a)
    await eventually(lambda: other.transport.directory.gateway() == GW, what="holder announced")
    stock = await raw_client()
    to = f"calc@{GW}"
    answers = collections.Counter([(await rpc_call(stock, to, "who"))[0] for _ in range(20)])
    assert set(answers) == {"a", "b"}, answers
    concurrent = await asyncio.gather(*(rpc_call(stock, to, "who", 0.2) for _ in range(8)))
    assert {r[0] for r in concurrent} == {"a", "b"}, concurrent
    holder.transport.drop_connection()           # the holder's network goes: it lets go
    await eventually(lambda: not holder.transport.gateway.holding, what="the holder let go")
    assert (await rpc_retrying(stock, to, "who"))[0] in {"a", "b"}   # someone holds it again
    await eventually(lambda: a.transport.gateway.holding or b.transport.gateway.holding,
                     what="held again")
    holder, other = (a, b) if a.transport.gateway.holding else (b, a)
    await holder.close()                         # the holder goes for good: the other takes it
    await eventually(lambda: other.transport.gateway.holding, what="the other took over")
    survivor = "b" if holder is a else "a"
    await eventually(lambda: len(other.transport.directory.peers) == 1, what="holder gone")
    assert {(await rpc_retrying(stock, to, "who"))[0] for _ in range(5)} == {survivor}


async def test_a_wrong_gateway_secret_leaves_the_bus_working(bus_for, xmpp_server):
    node = await gateway_node(bus_for, xmpp_server, gateway_secret="wrong")
    client = await bus_for()
    assert await client.proxy("calc").add(2, 3) == 5
    assert not node.transport.gateway.holding
