"""Events: '*' is exactly one word, '#' zero or more; every subscriber gets each match."""

from __future__ import annotations

import pytest

from .services import Calc
from .util import eventually

TOPICS = ["orders", "orders.created", "orders.eu.created", "users.created", "orders.created.late"]
CASES = {
    "orders.*": ["orders.created"],
    "orders.#": ["orders", "orders.created", "orders.eu.created", "orders.created.late"],
    "#": TOPICS,
    "*.created": ["orders.created", "users.created"],
    "orders.#.created": ["orders.created", "orders.eu.created"],
    "#.late": ["orders.created.late"],
    "orders": ["orders"],
}


async def test_topic_matching(open_bus):
    sub = await open_bus("listener")
    got: dict[str, list[str]] = {p: [] for p in CASES}
    for pattern in CASES:
        await sub.subscribe(pattern, lambda topic, payload, p=pattern: got[p].append(topic))
    pub = await open_bus()
    for topic in TOPICS:
        pub.publish(topic, {"t": topic})
    pub.publish("zzz.end", None)
    await eventually(lambda: got["#"] == [*TOPICS, "zzz.end"], what="catch-all saw everything")
    for pattern, expected in CASES.items():
        if pattern == "#":
            continue
        await eventually(lambda p=pattern, e=expected: sorted(got[p]) == sorted(e),
                         what=f"{pattern} got {got[pattern]}, wants {expected}")


async def test_node_event_handlers_and_broadcast_to_every_replica(open_bus):
    a, b = Calc("a"), Calc("b")
    await (await open_bus("calc")).serve(a)
    await (await open_bus("calc")).serve(b)
    pub = await open_bus()
    pub.publish("orders.created", {"id": 1, "blob": b"\x00"})
    pub.publish("orders.eu.created", {"id": 2})   # two words after orders: no match
    pub.publish("orders.paid", {"id": 3})
    await eventually(lambda: len(a.events) == 2 and len(b.events) == 2)
    assert a.events == b.events == [("orders.created", {"id": 1, "blob": b"\x00"}),
                                    ("orders.paid", {"id": 3})]


async def test_publish_refuses_wildcards(open_bus):
    pub = await open_bus()
    with pytest.raises(ValueError):
        pub.publish("orders.*", 1)
    with pytest.raises(ValueError):
        pub.publish("orders..x", 1)
