"""Topic matching against an independent reference: AMQP's rules as a regular expression."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vertebra.wire.topics import literal_prefix, matches, validate_pattern, validate_topic


def reference(pattern: str, topic: str) -> bool:
    # every word of the topic is followed by a dot; '*' eats one "word.", '#' any number
    rx = "".join(r"[^.]+\." if w == "*" else r"(?:[^.]+\.)*" if w == "#" else re.escape(w) + r"\."
                 for w in pattern.split("."))
    return re.fullmatch(rx, topic + ".") is not None


words = st.sampled_from(["a", "b", "c"])
topics = st.lists(words, min_size=1, max_size=5).map(".".join)
patterns = st.lists(words | st.sampled_from(["*", "#"]), min_size=1, max_size=5).map(".".join)


@given(patterns, topics)
@settings(max_examples=2000, deadline=None)
def test_matches_agrees_with_the_reference(pattern, topic):
    assert matches(pattern, topic) == reference(pattern, topic)


@pytest.mark.parametrize(("pattern", "topic", "expected"), [
    ("orders.#", "orders", True),          # the case FastStream's in-memory broker gets wrong
    ("orders.#", "orders.a.b", True),
    ("orders.*", "orders", False),
    ("orders.*", "orders.a.b", False),
    ("#", "x", True),
    ("#.x", "x", True),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y.c", False),
    ("*.*", "a", False),
])
def test_known_cases(pattern, topic, expected):
    assert matches(pattern, topic) is expected


def test_validation_and_prefix():
    assert validate_topic("a.b") == "a.b"
    for bad in ("", "a..b", "a.*", "#"):
        with pytest.raises(ValueError):
            validate_topic(bad)
    with pytest.raises(ValueError):
        validate_pattern("a..b")
    assert literal_prefix("orders.eu.*") == "orders.eu."
    assert literal_prefix("orders.eu") == "orders.eu"
    assert literal_prefix("#.x") == ""
    assert literal_prefix("orders.#") == "orders"          # '#' may match zero words


@given(patterns, topics)
@settings(max_examples=1000, deadline=None)
def test_every_matching_topic_starts_with_the_literal_prefix(pattern, topic):
    if matches(pattern, topic):
        assert topic.startswith(literal_prefix(pattern))
