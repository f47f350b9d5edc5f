"""Allow-lists answer ``forbidden``; TLS is verified unless the URL opts out."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError

import vertebra
from tests.servers import xmpp as xmpp_servers

from .nodes import Calc


async def test_caller_not_on_the_allow_list_is_forbidden(bus_for, raw_client):
    node = await bus_for("calc", url_params={"allow": "client@localhost"})
    await node.serve(Calc())
    friend = await bus_for("client")
    assert await friend.proxy("calc").add(1, 2) == 3
    intruder = await bus_for("intruder")
    with pytest.raises(vertebra.VertebraError) as err:
        await intruder.proxy("calc").add(1, 2)
    assert "forbidden" in str(err.value).lower()
    assert node.transport.stats["forbidden"] >= 1
    stock = await raw_client("stranger")
    iq = stock.make_iq_set(ito=node.transport.jid)
    iq.append(ET.fromstring("<query xmlns='jabber:iq:rpc'><methodCall><methodName>calc.add"
                            "</methodName><params/></methodCall></query>"))
    with pytest.raises(IqError) as iqerr:
        await iq.send(timeout=10)
    assert iqerr.value.iq["error"]["condition"] == "forbidden"
    assert await friend.proxy("calc").add(2, 2) == 4


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    with xmpp_servers.running_tls(tmp_path_factory.mktemp("xmpp-tls")) as server:
        yield server


def tls_url(server, role, **params):
    url = server.url(role, "vt-tls", **params)
    return url.replace("tls=0", "tls=1")


async def test_starttls_with_the_servers_ca_works(tls_server):
    node = vertebra.connect_async(tls_url(tls_server, "calc", ca=tls_server.ca_file))
    client = vertebra.connect_async(tls_url(tls_server, "client", ca=tls_server.ca_file))
    await node.start()
    try:
        await node.serve(Calc())
        # the client joins after the node announced: a joiner gets every occupant's presence
        # before its own (XEP-0045), so it knows the replica once start() returns (a bus
        # already in the room may still have the node's presence unread when serve() returns)
        await client.start()
        assert await client.proxy("calc").add(20, 22) == 42
    finally:
        await client.close(linger=0.5)
        await node.close(linger=0.5)


async def test_unverifiable_certificate_is_refused_unless_verify_0(tls_server):
    t = vertebra.transports.open_transport(tls_url(tls_server, "client"),
                                           vertebra.wire.codec.get_codec("json"))
    with pytest.raises(ConnectionError):
        await t.connect(lambda env: None)
    await t.close()
    t2 = vertebra.transports.open_transport(tls_url(tls_server, "client", verify="0"),
                                            vertebra.wire.codec.get_codec("json"))
    await t2.connect(lambda env: None)
    await t2.close()
