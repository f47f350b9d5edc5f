"""Discovery: bus.nodes() lists live services with methods, signatures and docstrings."""

from __future__ import annotations

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
