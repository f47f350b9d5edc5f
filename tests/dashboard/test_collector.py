"""What the dashboard gathers, without a browser: figures and rates from the stats call,
dead letters and their replay, choreographed workflows, on memory:// in this process."""

from __future__ import annotations

import asyncio
import time
import uuid

import vertebra
from vertebra.dashboard import Collector, WorkflowWatcher
from vertebra.dashboard.collector import service_entry
from vertebra.wire.info import MethodInfo, ServiceInfo
from vertebra.workflow import WorkflowError, step

from .nodes import Mailer, Shop


async def _until(cond, what: str, timeout: float = 20.0) -> None:
    """Wait for ``cond``; the timeout is a hang guard, never a speed requirement."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)


def _url() -> str:
    return f"memory://dash-{uuid.uuid4().hex[:10]}"


async def test_figures_rates_and_outbox_come_from_the_stats_call():
    url = _url()
    async with vertebra.connect_async(url) as node, vertebra.connect_async(url) as bus:
        await node.serve(Shop(), Mailer())
        collector = Collector(bus, interval=60)
        first = await collector.refresh()
        assert [s["name"] for s in first["services"]] == ["mailer", "shop"]
        shop = first["services"][1]
        assert shop["answered"] and shop["replicas"] == 1 and shop["doc"] == "Orders, prices and parcels."
        assert {m["name"]: m["kind"] for m in shop["methods"]} == {
            "price": "rpc", "ship": "task", "pack": "rpc", "label": "rpc"}
        assert {"queued", "sent", "dropped"} <= set(shop["outbox"])
        for _ in range(4):
            await bus.proxy("shop").price("abc")
        second = await collector.refresh()
        price = next(m for m in second["services"][1]["methods"] if m["name"] == "price")
        assert price["calls"] == 4 and price["errors"] == 0 and price["rate"] > 0
        assert second["version"] == first["version"] + 1 == collector.version
        assert second["errors"] == [] and "outbox" in second["bus"]


async def test_dead_letters_are_listed_with_their_error_and_replayed():
    url = _url()
    shop = Shop()
    async with vertebra.connect_async(url) as node, vertebra.connect_async(url) as bus:
        await node.serve(shop)
        collector = Collector(bus, interval=60)
        await collector.refresh()                       # learns that shop has tasks
        sent = bus.proxy("shop").ship.cast("parcel-1")

        async def dead() -> list:
            return (await collector.refresh())["dead_letters"]
        found: list = []
        deadline = time.monotonic() + 20                # a hang guard, not a speed requirement
        while not found and time.monotonic() < deadline:
            found = await dead()
        (d,) = found
        assert (d["id"], d["service"], d["method"], d["args"], d["attempts"]) == (
            sent, "shop", "ship", ["parcel-1"], 1)
        assert (d["error"]["type"], d["error"]["message"]) == ("PermissionError", "the depot is closed")
        assert "Traceback" in d["error"]["traceback"]
        shop.depot_open = True
        assert await collector.replay("shop", [sent]) == 1
        await _until(lambda: shop.shipped == ["parcel-1"], "the replayed task ran")
        assert await dead() == []


async def test_a_service_that_does_not_answer_is_listed_as_such():
    entry = service_entry(ServiceInfo("legacy", (MethodInfo("ping", "rpc"),), replicas=2), [], None)
    assert entry["answered"] is False and entry["replicas"] == 2
    assert entry["methods"] == [{"name": "ping", "kind": "rpc", "calls": None, "rate": None, "errors": None,
                                 "in_flight": None, "p50_ms": None, "p99_ms": None}]


async def test_choreographed_workflows_are_followed_to_their_end():
    url = _url()
    async with vertebra.connect_async(url) as node, vertebra.connect_async(url) as bus, \
            vertebra.connect_async(url) as starter:
        await node.serve(Shop(), Mailer())
        watcher = WorkflowWatcher()
        await watcher.start(bus)
        flow = step("shop.pack") | step("shop.label") | step("mailer.notify")
        assert await flow.run_async(starter, "7", mode="choreographed") == "mailed label:box-7"
        try:
            await flow.run_async(starter, "13", mode="choreographed")
        except WorkflowError:
            pass
        else:
            raise AssertionError("order 13 has no address")
        ended = lambda: [r["state"] for r in watcher.runs() if r["state"] != "running"]  # noqa: E731
        await _until(lambda: len(ended()) == 2, "both runs seen to their end")
        by_state = {r["state"]: r for r in watcher.runs()}
        done, failed = by_state["finished"], by_state["failed"]
        assert done["steps"] == ["shop.pack", "shop.label", "mailer.notify"] and done["done"] == 3
        assert done["result"] == "'mailed label:box-7'"
        assert failed["done"] == 1 and failed["failed_step"] == "shop.label"
        assert failed["error"] == "ValueError: no address for order 13"


def test_the_watcher_orders_running_runs_first_and_keeps_a_bounded_number():
    w = WorkflowWatcher(keep=3)
    w.on_event("_vertebra.workflow.b1x.r1", {"run": "r1", "step": "a.x", "index": 0})
    w.on_event("_vertebra.workflow.b1x.r1", {"run": "r1", "result": 5})
    w.on_event("_vertebra.workflow.b1x.r2", {"run": "r2", "step": "a.x", "index": 0})
    w.on_event("_vertebra.workflow.b1x.r2", "not a map")
    assert [(r["run"], r["state"], r["starter"]) for r in w.runs()] == [("r2", "running", "b1x"),
                                                                      ("r1", "finished", "b1x")]
    for n in range(3, 6):
        w.on_event(f"_vertebra.workflow.b1x.r{n}", {"run": f"r{n}", "step": "a.x", "index": 0})
    assert sorted(r["run"] for r in w.runs()) == ["r3", "r4", "r5"]     # the ended one went first
