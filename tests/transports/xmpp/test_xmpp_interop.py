"""A stock XMPP client talks to a vertebra node: Jabber-RPC (XEP-0009), disco, ping."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0009.binding import py2xml, xml2fault, xml2py

from .nodes import Calc


async def rpc_call(client, to, method, *args):
    iq = client.plugin["xep_0009"].make_iq_method_call(to, method, py2xml(*args))
    resp = await iq.send(timeout=10)
    response = resp["rpc_query"]["method_response"]
    if response.xml.find("{jabber:iq:rpc}fault") is not None:
        return ("fault", xml2fault(response["fault"]))
    return xml2py(response["params"])


async def test_stock_jabber_rpc_client_calls_rpc_methods(bus_for, raw_client):
    node = await bus_for("calc")
    await node.serve(Calc())
    stock = await raw_client()
    to = node.transport.jid
    assert await rpc_call(stock, to, "calc.add", 2, 40) == [42]
    value = {"i": 7, "b": True, "s": "héllo <&>", "d": 2.5, "l": [1, "two", False],
             "nested": {"x": [1.5, {"y": "z"}]}}
    assert await rpc_call(stock, to, "calc.echo", value) == [value]
    assert await rpc_call(stock, to, "add", 1, 1) == [2]   # unique method: service optional


async def test_jabber_rpc_types_both_ways_including_base64_and_nil(bus_for, raw_client):
    node = await bus_for("calc")
    await node.serve(Calc())
    stock = await raw_client()
    query = ("<query xmlns='jabber:iq:rpc'><methodCall><methodName>calc.echo</methodName>"
             "<params><param><value><array><data>"
             "<value><i4>5</i4></value><value><base64>aGk=</base64></value><value><nil/></value>"
             "<value><dateTime.iso8601>20260101T10:00:00</dateTime.iso8601></value>"
             "<value>plain</value></data></array></value></param></params></methodCall></query>")
    iq = stock.make_iq_set(ito=node.transport.jid)
    iq.append(ET.fromstring(query))
    resp = await iq.send(timeout=10)
    values = resp.xml.find(".//{jabber:iq:rpc}data")
    kinds = [v[0].tag.split("}")[1] for v in values]
    assert kinds == ["int", "base64", "nil", "string", "string"]
    assert values[1][0].text == "aGk="


async def test_faults_for_errors_and_unknown_methods(bus_for, raw_client):
    node = await bus_for("calc")
    await node.serve(Calc())
    stock = await raw_client()
    kind, fault = await rpc_call(stock, node.transport.jid, "calc.fail", "boom")
    assert kind == "fault" and "boom" in fault["string"]
    kind, fault = await rpc_call(stock, node.transport.jid, "calc.nope")
    assert kind == "fault" and fault["code"] == 404
    assert await rpc_call(stock, node.transport.jid, "calc.add", 1, 2) == [3]


async def test_disco_lists_methods_and_ping_is_answered(bus_for, raw_client):
    node = await bus_for("calc")
    await node.serve(Calc())
    stock = await raw_client()
    iq = stock.make_iq_get(ito=node.transport.jid)
    iq.append(ET.fromstring("<query xmlns='http://jabber.org/protocol/disco#items'/>"))
    resp = await iq.send(timeout=10)
    nodes = {i.get("node") for i in resp.xml.iter("{http://jabber.org/protocol/disco#items}item")}
    assert {"calc.add", "calc.echo", "calc.work"} <= nodes
    iq = stock.make_iq_get(ito=node.transport.jid)
    iq.append(ET.fromstring("<query xmlns='http://jabber.org/protocol/disco#info'/>"))
    resp = await iq.send(timeout=10)
    feats = {f.get("var") for f in resp.xml.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert {"jabber:iq:rpc", "urn:vertebra:envelope:1", "urn:xmpp:ping"} <= feats
    iq = stock.make_iq_get(ito=node.transport.jid)
    iq.append(ET.fromstring("<ping xmlns='urn:xmpp:ping'/>"))
    assert (await iq.send(timeout=10))["type"] == "result"


async def test_unknown_namespace_is_feature_not_implemented(bus_for, raw_client):
    node = await bus_for("calc")
    await node.serve(Calc())
    stock = await raw_client()
    iq = stock.make_iq_set(ito=node.transport.jid)
    iq.append(ET.fromstring("<query xmlns='urn:example:nothing'/>"))
    with pytest.raises(IqError) as err:
        await iq.send(timeout=10)
    assert err.value.iq["error"]["condition"] == "feature-not-implemented"
