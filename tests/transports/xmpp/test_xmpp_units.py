"""Pure pieces: XML-RPC value mapping both ways, URL options, stanza helpers."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vertebra.transports.xmpp import jabber_rpc, stanzas
from vertebra.transports.xmpp.options import parse_url

Q = "jabber:iq:rpc"
xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")))
values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | xml_text
    | st.floats(allow_nan=False, allow_infinity=False) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(xml_text, inner, max_size=4),
    max_leaves=12)


def parse_value(text: str):
    el = ET.fromstring(f"<query xmlns='{Q}'>{text}</query>")
    return jabber_rpc.from_xml(el[0])


@given(values)
def test_every_value_round_trips_through_xml_rpc(value):
    assert parse_value(jabber_rpc.to_xml(value)) == value


def test_i4_datetime_untyped_and_bad_values():
    assert parse_value("<value><i4>7</i4></value>") == 7
    assert parse_value("<value><dateTime.iso8601>20260101T00:00:00</dateTime.iso8601></value>") \
        == "20260101T00:00:00"
    assert parse_value("<value>plain</value>") == "plain"
    for bad in ("<value><int>x</int></value>", "<value><boolean>2</boolean></value>",
                "<value><weird>1</weird></value>", "<value><base64>%%</base64></value>"):
        with pytest.raises(jabber_rpc.RpcError):
            parse_value(bad)
    with pytest.raises(ValueError):
        jabber_rpc.to_xml(float("nan"))


def test_url_options_default_to_verified_tls():
    o = parse_url("xmpp://calc:pw@xmpp.example.org", 1000)
    assert (o.bare, o.port, o.tls, o.verify, o.muc, o.room) == (
        "calc@xmpp.example.org", 5222, True, True, "conference.xmpp.example.org", "vertebra")
    o = parse_url("xmpp://a:b@127.0.0.1:5333?domain=localhost&tls=0&allow=X@localhost,y@h", 1)
    assert (o.bare, o.tls, o.allow) == ("a@localhost", False, frozenset({"x@localhost", "y@h"}))
    with pytest.raises(ValueError):
        parse_url("xmpp://host-only", 1)


def test_env_element_round_trip_and_bad_base64():
    iq = ET.fromstring(stanzas.set_iq("a@b/c", "id1", b"\x80\x01").replace(
        "<iq ", "<iq xmlns='jabber:client' "))
    assert stanzas.env_of(iq) == b"\x80\x01"
    bad = ET.fromstring(f"<iq xmlns='jabber:client'><env xmlns='{stanzas.NS_ENV}'>!!</env></iq>")
    with pytest.raises(ValueError):
        stanzas.env_of(bad)


def test_delivery_options_and_the_gone_max_attempts():
    o = parse_url("xmpp://a:b@h", 1)
    assert (o.grace, o.ack_wait, o.max_redeliveries) == (3.0, 30.0, 10)
    o = parse_url("xmpp://a:b@h?grace=0.5&ack_wait=2&max_redeliveries=4", 1)
    assert (o.grace, o.ack_wait, o.max_redeliveries) == (0.5, 2.0, 4)
    with pytest.raises(ValueError, match=r"@task\(max_attempts"):
        parse_url("xmpp://a:b@h?max_attempts=3", 1)


def test_delivery_keys_tell_attempts_and_replays_apart():
    from vertebra.transports.xmpp.outgoing import REPLAY_HEADER, delivery_key
    from vertebra.wire.deadletter import with_attempt
    from vertebra.wire.envelope import Envelope

    env = Envelope("task", service="s", method="m")
    second = with_attempt(env, 2)
    replayed = with_attempt(env, 1)
    replayed.headers[REPLAY_HEADER] = "r1"
    keys = {delivery_key(env), delivery_key(second), delivery_key(replayed)}
    assert len(keys) == 3 and delivery_key(with_attempt(second, 1)) == delivery_key(env)


def test_arguments_fit_the_announced_signature():
    fits = jabber_rpc.fits
    assert fits("(a: int, b: int) -> int", 2)
    assert not fits("(a: int, b: int) -> int", 1) and not fits("(a: int, b: int) -> int", 3)
    assert fits("(a, b=2)", 1) and fits("(a, b=2)", 2) and not fits("(a, b=2)", 3)
    assert fits("(*items: str) -> None", 0) and fits("(a, *rest)", 5) and not fits("(a, *rest)", 0)
    assert not fits("(a, *, key)", 1)                 # a keyword-only argument XML-RPC cannot pass
    assert fits("(a, *, key=1)", 1) and fits("(a, /, b)", 2)
    assert fits("", 7) and fits("(x=<object object at 0x7f>)", 3)   # unreadable: no opinion


def test_fault_codes_for_wire_errors():
    code = jabber_rpc.fault_code
    assert code({"code": "unreachable", "type": "Unreachable"}) == 404
    assert code({"code": "protocol", "type": "ProtocolError"}) == 400
    assert code({"code": "remote", "type": "TypeError", "bad_arguments": True}) == 400
    assert code({"code": "remote", "type": "TypeError"}) == 500    # the handler's own TypeError
    assert code({"code": "remote", "type": "ValueError"}) == 500
    fault = ET.fromstring(jabber_rpc.fault_of({"code": "remote", "type": "KeyError",
                                               "message": "x"}))
    assert "KeyError: x" in ET.tostring(fault, encoding="unicode")


def test_the_codec_of_an_envelope_is_told_by_its_first_byte():
    from vertebra.transports.xmpp.inflight import codec_of

    assert codec_of(b'{"v":1}').name == "json"
    assert codec_of(b' \n{"v":1}').name == "json"
    assert codec_of(b"\x87\xa1v\x01").name == "msgpack"
    assert codec_of(b"\xde\x00\x10").name == "msgpack"


def test_gateway_options():
    o = parse_url("xmpp://a:pw@h?gateway=nodes.example.org&gateway_secret=s", 100)
    assert (o.gateway, o.gateway_secret, o.gateway_host, o.gateway_port) == \
        ("nodes.example.org", "s", "h", 5347)
    assert parse_url("xmpp://a:pw@h", 100).gateway == ""
    with pytest.raises(ValueError, match="gateway_secret"):
        parse_url("xmpp://a:pw@h?gateway=nodes.example.org", 100)
    with pytest.raises(ValueError, match="component domain"):
        parse_url("xmpp://a:pw@h?gateway=calc@nodes.example.org&gateway_secret=s", 100)


def test_presence_node_carries_the_gateway_and_errors_have_env_first():
    node = ET.fromstring(f"<presence xmlns='jabber:client'>"
                         f"{stanzas.presence_node('a@b/c', 2, [], 'nodes.b')}</presence>")
    assert stanzas.node_of(node) == ("a@b/c", 2, [], "nodes.b")
    iq = ET.fromstring(stanzas.error_iq("x@y", "1", "item-not-found", inner="<env xmlns="
                                        "'urn:vertebra:envelope:1'>e30=</env>", frm="s@gw"))
    assert [c.tag.rpartition("}")[2] for c in iq] == ["env", "error"]
    assert iq.get("from") == "s@gw"


async def test_a_component_stream_tells_conflict_from_a_wrong_secret():
    import asyncio

    from vertebra.transports.xmpp.component import ComponentStream, Refused, Taken

    async def fake_server(answer: bytes) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1000)
            writer.write(b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept'"
                         b" xmlns:stream='http://etherx.jabber.org/streams' id='abc'>")
            await reader.read(1000)
            writer.write(answer)
            await writer.drain()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    servers: list[asyncio.Server] = []
    cases = [(b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
              b"</stream:error></stream:stream>", Taken),
             (b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
              b"</stream:error></stream:stream>", Refused)]
    for answer, exc in cases:
        stream = ComponentStream("gw", "s", "127.0.0.1", await fake_server(answer), print)
        with pytest.raises(exc):
            await stream.open(5)
    got: list[str] = []
    stream = ComponentStream("gw", "s", "127.0.0.1", await fake_server(
        b"<handshake/><iq type='get' id='1' from='x@y' to='gw'><ping xmlns='urn:xmpp:ping'/></iq>"
        b"</stream:stream>"), lambda el: got.append(el.get("id", "")))
    await stream.open(5)
    assert "ended" in await stream.run()
    assert got == ["1"]
    for server in servers:
        server.close()


def test_stream_answers_travel_in_headline_messages():
    text = stanzas.answer_message("a@b/c", b'{"v":1}').replace(
        "<message ", "<message xmlns='jabber:client' ")
    msg = ET.fromstring(text)
    assert (msg.get("type"), msg.get("to")) == ("headline", "a@b/c")
    assert stanzas.is_answer_message(msg) and stanzas.env_of(msg) == b'{"v":1}'
    chat = ET.fromstring(text.replace("headline", "chat"))
    assert not stanzas.is_answer_message(chat)
    assert stanzas.same_jid("Calc@LocalHost/vt-1", "calc@localhost/vt-1")
    assert not stanzas.same_jid("calc@localhost/VT-1", "calc@localhost/vt-1")
    assert not stanzas.same_jid("calc@localhost", "calc@localhost/vt-1")


def test_capabilities_no_priorities_and_the_outbox_holds_delayed_messages():
    from vertebra.transports.xmpp import XmppTransport

    caps = XmppTransport.capabilities
    assert (caps.priorities, caps.holds_delayed) == (False, False)
