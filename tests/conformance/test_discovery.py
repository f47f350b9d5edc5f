"""Discovery: bus.nodes() lists live services with methods, signatures and docstrings."""

from __future__ import annotations

import pytest

import vertebra

from .services import Calc, Solo
from .util import poll_nodes


async def test_nodes_lists_services_methods_and_replicas(open_bus):
    await (await open_bus("calc")).serve(Calc("r1"))
    await (await open_bus("calc")).serve(Calc("r2"))
    await (await open_bus("solo")).serve(Solo())
    client = await open_bus()
    found = await poll_nodes(client, lambda f: "solo" in f and "calc" in f and f["calc"].replicas == 2)
    calc = found["calc"]
    assert calc.doc == "Arithmetic and friends."
    assert calc.transport == client.transport.scheme
    add = calc.method("add")
    assert add is not None and add.kind == "rpc"
    assert add.signature == "(a: int, b: int) -> int"
    assert add.doc == "Return a + b."
    assert calc.method("crunch").kind == "task"
    on_order = calc.method("on_order")
    assert on_order.kind == "event" and on_order.pattern == "orders.*"
    assert found["solo"].method("hold") is not None


async def test_a_stopped_service_leaves_discovery(open_bus):
    node = await open_bus("solo")
    await node.serve(Solo())
    client = await open_bus()
    await poll_nodes(client, lambda f: "solo" in f)
    await node.stop_serving(timeout=2)
    await poll_nodes(client, lambda f: "solo" not in f)


async def test_every_node_answers_the_builtin_stats_call(open_bus):
    await (await open_bus("calc")).serve(Calc("r1"))
    client = await open_bus()
    calc = client.proxy("calc")
    assert await calc.add(1, 2) == 3
    with pytest.raises(vertebra.RemoteError):
        await calc.fail("x")
    stats = await calc["_vertebra_stats"]()
    assert stats["service"] == "calc"
    assert stats["methods"]["add"]["calls"] == 1
    assert stats["methods"]["add"]["errors"] == 0
    assert stats["methods"]["fail"] == {**stats["methods"]["fail"], "calls": 1, "errors": 1, "in_flight": 0}
    assert stats["methods"]["add"]["p99_ms"] >= stats["methods"]["add"]["p50_ms"] >= 0
    assert "outbox" in stats["bus"]


async def test_a_node_without_a_docstring_is_advertised_with_an_empty_doc(open_bus):
    class Bare(vertebra.Node):
        name = "bare"

        @vertebra.rpc
        def ping(self) -> str:
            return "pong"

    await (await open_bus("bare")).serve(Bare())
    client = await open_bus()
    found = await poll_nodes(client, lambda f: "bare" in f)
    assert found["bare"].doc == ""                 # not the Node base class's docstring
    assert found["bare"].method("ping").doc == ""
