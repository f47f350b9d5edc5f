"""The frame parser and the subscription prefix, fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vertebra.transports.zmq import frames as F
from vertebra.wire.topics import literal_prefix, matches

frame_lists = st.lists(st.binary(max_size=40), max_size=8)


@settings(max_examples=1000, deadline=None)
@given(frame_lists)
def test_parse_raises_only_frame_error(frames):
    for table in (F.CLIENT_COMMANDS, F.HUB_COMMANDS, F.DIRECT_CALLS, F.DIRECT_ANSWERS):
        try:
            cmd, args = F.parse(frames, table)
        except F.FrameError:
            continue
        assert cmd in table
        assert len(args) == len(frames) - 1
        group = F.GROUPS.get(cmd) if table is F.HUB_COMMANDS else None
        extra = F.OPTIONAL.get(cmd, 0) if table in (F.CLIENT_COMMANDS, F.DIRECT_CALLS) else 0
        if group is None:
            assert table[cmd] <= len(args) <= table[cmd] + extra
        else:
            assert len(args) >= table[cmd] and (len(args) - table[cmd]) % group == 0


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(F.CLIENT_COMMANDS)), st.lists(st.binary(max_size=20), max_size=5))
def test_parse_accepts_exactly_the_documented_frame_count(cmd, rest):
    frames = [F.header(cmd), *rest]
    want = F.CLIENT_COMMANDS[cmd]
    if want <= len(rest) <= want + F.OPTIONAL.get(cmd, 0):
        assert F.parse(frames, F.CLIENT_COMMANDS) == (cmd, rest)
    else:
        with pytest.raises(F.FrameError):
            F.parse(frames, F.CLIENT_COMMANDS)


def test_dead_letters_take_their_fixed_frames_then_whole_groups():
    head = F.header(F.DEAD_LETTERS)
    assert F.parse([head, b"r", b"{}"], F.HUB_COMMANDS) == (F.DEAD_LETTERS, [b"r", b"{}"])
    assert F.parse([head, b"r", b"{}", b"id", b"{}", b"env"], F.HUB_COMMANDS)[0] == F.DEAD_LETTERS
    for frames in ([head, b"r"], [head, b"r", b"{}", b"id"], [head, b"r", b"{}", b"id", b"{}"]):
        with pytest.raises(F.FrameError):
            F.parse(frames, F.HUB_COMMANDS)


def test_the_priority_frame_is_optional_only_where_documented():
    assert set(F.OPTIONAL) == {F.CALL, F.CAST, F.TASK, F.REPLAY}
    for cmd in (F.CAST, F.TASK, F.CALL):
        assert F.parse([F.header(cmd), b"s", b"id", b"env"], F.CLIENT_COMMANDS)[1][-1] == b"env"
        assert F.parse([F.header(cmd), b"s", b"id", b"7", b"env"], F.CLIENT_COMMANDS)[1][2] == b"7"
    for frames in ([F.header(F.REPLY), b"tag", b"7", b"env"], [F.header(F.ITEM), b"tag"],
                   [F.header(F.ITEM), b"tag", b"7", b"env"]):
        with pytest.raises(F.FrameError):
            F.parse(frames, F.CLIENT_COMMANDS)
    with pytest.raises(F.FrameError):   # hub-side CALL deliveries take no priority frame
        F.parse([F.header(F.CALL), b"s", b"tag", b"7", b"env"], F.HUB_COMMANDS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4))
def test_a_priority_frame_is_exactly_one_ascii_digit(frame):
    if len(frame) == 1 and frame.isdigit():
        assert F.priority_of(frame) == int(frame) and F.priority_frame(int(frame)) == frame
    else:
        with pytest.raises(F.FrameError):
            F.priority_of(frame)


def test_priority_frame_refuses_what_is_not_a_priority():
    for bad in (-1, 10, True, 2.0):
        with pytest.raises(ValueError):
            F.priority_frame(bad)  # type: ignore[arg-type]


def test_wrong_version_is_refused_with_a_clear_reason():
    with pytest.raises(F.FrameError, match="version 2"):
        F.parse([bytes((2, F.CALL)), b"s", b"id", b"{}"], F.CLIENT_COMMANDS)


words = st.sampled_from(["a", "b", "ab", "orders", "x"])
patterns = st.lists(st.one_of(words, st.sampled_from(["*", "#"])), min_size=1, max_size=5).map(".".join)
topics = st.lists(words, min_size=1, max_size=5).map(".".join)


@settings(max_examples=1500, deadline=None)
@given(patterns, topics)
def test_the_prefix_filter_never_drops_a_matching_topic(pattern, topic):
    if matches(pattern, topic):
        assert topic.startswith(literal_prefix(pattern))


def test_prefix_examples():
    assert literal_prefix("orders.#") == "orders"
    assert literal_prefix("orders.*") == "orders."
    assert literal_prefix("#") == ""
    assert literal_prefix("a.b") == "a.b"
