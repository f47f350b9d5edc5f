"""The sync facade: blocking calls, futures, casts — from many threads at once."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

import vertebra

from .services import Calc
from .util import wait_sync


def test_sync_calls_futures_and_casts(sync_bus):
    node = sync_bus("calc")
    calc_node = Calc()
    node.serve(calc_node)
    client = sync_bus("client", timeout=10)
    calc = client.proxy("calc")
    assert calc.add(2, 3) == 5
    fut = calc.add.future(4, 5)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(10) == 9
    assert isinstance(calc.crunch.cast("sync-job"), str)
    wait_sync(lambda: calc_node.tasks == ["sync-job"])
    with pytest.raises(vertebra.RemoteError):
        calc.fail("x")
    assert client.call("calc", "add", 1, 1) == 2


def test_200_concurrent_calls_from_8_threads_without_cross_talk(sync_bus):
    sync_bus("calc").serve(Calc())
    client = sync_bus("client", timeout=30)
    calc = client.proxy("calc")
    errors: list[str] = []

    def worker(t: int) -> None:
        for i in range(25):
            value = {"thread": t, "i": i, "tid": threading.get_ident()}
            got = calc.echo(value)
            if got != value:
                errors.append(f"{value} -> {got}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads)
    assert errors == []


def test_events_through_the_sync_api(sync_bus):
    sub = sync_bus("listener")
    seen: list[str] = []
    sub.subscribe("metrics.#", lambda topic, payload: seen.append(topic))
    pub = sync_bus()
    pub.publish("metrics.cpu", 0.5)
    pub.publish("other", 1)
    pub.publish("metrics.mem.rss", 1)
    wait_sync(lambda: sorted(seen) == ["metrics.cpu", "metrics.mem.rss"])
