"""The codecs: every wire value round-trips; no input makes them raise anything but ProtocolError."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vertebra import ProtocolError
from vertebra.wire.codec import CODECS, MAX_DEPTH, decode
from vertebra.wire.envelope import Envelope

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary() | \
    st.floats(allow_nan=False, allow_infinity=False)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                      st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@pytest.mark.parametrize("codec", sorted(CODECS))
@given(args=st.lists(values, max_size=4), kwargs=st.dictionaries(st.text(max_size=5), values, max_size=3))
@settings(max_examples=150, deadline=None)
def test_call_envelopes_round_trip(codec, args, kwargs):
    env = Envelope("call", service="s", method="m", args=args, kwargs=kwargs, deadline=12.5,
                   headers={"traceparent": "00-x"})
    back = decode(CODECS[codec].encode(env))
    assert back.args == args
    assert back.kwargs == kwargs
    assert (back.id, back.kind, back.deadline, back.headers) == (env.id, "call", 12.5, env.headers)


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_garbage_raises_only_protocol_error(data):
    try:
        decode(data)
    except ProtocolError:
        pass


@given(st.dictionaries(st.sampled_from(["v", "id", "kind", "service", "method", "args", "kwargs",
                                        "re", "error", "deadline", "headers", "topic", "payload"]),
                       values, max_size=8))
@settings(max_examples=500, deadline=None)
def test_arbitrary_maps_raise_only_protocol_error(d):
    for data in (json.dumps(d, default=repr).encode(), CODECS["msgpack"].encode.__self__ and
                 __import__("msgpack").packb(d, use_bin_type=True)):
        try:
            decode(data)
        except ProtocolError:
            pass


def test_pickle_is_not_an_envelope():
    with pytest.raises(ProtocolError):
        decode(pickle.dumps({"v": 1, "kind": "call"}))


def test_bytes_are_tagged_in_json_and_user_dollar_keys_are_protected():
    env = Envelope("reply", re="x", result=[b"\x00", {"$bytes": "AA=="}])
    wire = CODECS["json"].encode(env)
    assert b'{"$bytes":"AA=="}' in wire and b'"$map"' in wire
    assert decode(wire).result == [b"\x00", {"$bytes": "AA=="}]


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_nesting_past_the_limit_is_refused_on_both_sides(codec):
    deep: list = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(ProtocolError):
        CODECS[codec].encode(Envelope("reply", re="x", result=deep))
    raw = {"v": 1, "id": "a", "kind": "reply", "re": "b", "result": deep}
    data = json.dumps(raw).encode() if codec == "json" else __import__("msgpack").packb(raw)
    with pytest.raises(ProtocolError):
        decode(data)


def test_wrong_version_names_both_versions():
    data = json.dumps({"v": 2, "id": "a", "kind": "call", "service": "s", "method": "m"}).encode()
    with pytest.raises(ProtocolError, match="version 2") as info:
        decode(data)
    assert info.value.envelope_id == "a"


def test_non_string_map_keys_and_unknown_types_cannot_be_sent():
    with pytest.raises(ProtocolError):
        CODECS["json"].encode(Envelope("reply", re="x", result={1: "a"}))
    with pytest.raises(ProtocolError):
        CODECS["msgpack"].encode(Envelope("reply", re="x", result=object()))
