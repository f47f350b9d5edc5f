"""Bad IQ payloads get proper XMPP errors; the node keeps serving."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError

from .nodes import Calc


def env_iq(client, to, body: str):
    iq = client.make_iq_set(ito=to)
    iq.append(ET.fromstring(f"<env xmlns='urn:vertebra:envelope:1'>{body}</env>"))
    return iq


def b64json(d) -> str:
    return base64.b64encode(json.dumps(d).encode()).decode()


CALL = {"v": 1, "id": "x1", "kind": "call", "service": "calc", "method": "add", "args": [1, 2]}
CASES = {
    "not base64": ("%%%not base64%%%", "bad-request"),
    "not an envelope": (base64.b64encode(b"\x00\x01garbage").decode(), "bad-request"),
    "wrong version": (b64json({**CALL, "v": 99}), "feature-not-implemented"),
    "event in an IQ": (b64json({"v": 1, "id": "e1", "kind": "event", "topic": "a.b",
                                "payload": 1}), "bad-request"),
    "oversized": (base64.b64encode(b"{" + b" " * 200_000 + b"}").decode(), "not-acceptable"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_payload_gets_an_xmpp_error_and_node_survives(bus_for, raw_client, case):
    node = await bus_for("calc")
    await node.serve(Calc())
    stock = await raw_client()
    body, condition = CASES[case]
    with pytest.raises(IqError) as err:
        await env_iq(stock, node.transport.jid, body).send(timeout=10)
    assert err.value.iq["error"]["condition"] == condition
    assert node.transport.stats["malformed"] >= 1
    client = await bus_for()
    assert await client.proxy("calc").add(1, 2) == 3


async def test_a_good_envelope_from_a_stock_client_is_answered(bus_for, raw_client):
    node = await bus_for("calc")
    await node.serve(Calc())
    stock = await raw_client()
    resp = await env_iq(stock, node.transport.jid, b64json(CALL)).send(timeout=10)
    reply = json.loads(base64.b64decode(resp.xml.find("{urn:vertebra:envelope:1}env").text))
    assert reply["kind"] == "reply" and reply["re"] == "x1" and reply["result"] == 3
