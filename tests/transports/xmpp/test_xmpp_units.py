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
