"""The classes behind the plugin's fixtures, used directly (as outside pytest)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import uuid

import pytest

import vertebra
from vertebra import Node, task
from vertebra.backoff import Backoff
from vertebra.nodes.retry import RetryPolicy
from vertebra.testing import AsyncHarness, FakeClock, Harness, Record, Recorder


def fresh_url() -> str:
    return f"memory://helpers-{uuid.uuid4().hex[:8]}"


class Flaky(Node):
    retry_delay = 0.25
    max_attempts = 4

    @task
    def crunch(self, job: str) -> None:
        raise RuntimeError("always")


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(start=1000.0, jitter=0.5)
    mono = clock.monotonic()
    clock.advance(2.5)
    clock.slept(1.0)
    assert clock.time() == 1003.5
    assert clock.monotonic() - mono == 3.5
    assert clock.sleeps == [1.0]
    assert clock.backoff(Backoff(base=1.0, cap=3.0)).delay(5) == 1.5   # cap 3 × jitter 0.5
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)


async def test_fake_clock_drives_retries_and_puts_everything_back() -> None:
    clock = FakeClock()
    async with AsyncHarness(fresh_url()) as h:
        node_bus = await h.served(Flaky())
        [rt] = node_bus.runtimes
        original = dict(rt.retry_policies)
        outbox_clock = node_bus.outbox.clock
        with clock.drive(node_bus):
            assert all(type(p) is not RetryPolicy for p in rt.retry_policies.values())
            client = await h.client()
            client.proxy("flaky").crunch.cast("j")
            for _ in range(1000):
                if await client.dead_letters("flaky"):
                    break
                await asyncio.sleep(0.01)
            [dead] = await client.dead_letters("flaky")
            assert dead.attempts == 4
            assert clock.sleeps == [0.25, 0.5, 1.0]
        assert rt.retry_policies == original
        assert node_bus.outbox.clock is outbox_clock


async def test_fake_clock_expires_an_unsendable_cast_after_max_age_without_waiting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    async with AsyncHarness(fresh_url(), max_age=600.0) as h:
        bus = await h.client()

        async def down(env: object) -> None:
            raise ConnectionError("transport down")
        monkeypatch.setattr(bus.outbox, "_send", down)
        clock.install(bus)
        bus.cast("nobody", "ping")
        for _ in range(1000):
            if bus.outbox.counts["expired"]:
                break
            await asyncio.sleep(0.01)
        assert bus.outbox.counts["expired"] == 1
        assert sum(clock.sleeps) >= 600.0          # max_age passed, in fake time
        assert bus.outbox.counts["retries"] == len(clock.sleeps)


def test_served_raises_when_a_service_never_becomes_routable() -> None:
    with Harness(fresh_url()) as h, pytest.raises(TimeoutError, match="ghost not routable"):
        h.wait_routable("ghost", timeout=0.1)


def test_harness_closes_its_buses() -> None:
    h = Harness(fresh_url())
    with h:
        buses = [h.client, h.bus()]
    assert all(b.core._closed for b in buses)


def test_recorder_wakes_a_waiter_in_another_thread() -> None:
    rec = Recorder("test")
    threading.Timer(0.01, rec.add, [Record("cast", method="a")]).start()
    assert [r.method for r in rec.wait_for(1)] == ["a"]
    rec.add(Record("event", topic="x.y"))
    assert rec.matching(kind="event") == [Record("event", topic="x.y")]
    assert rec.matching("a") == [Record("cast", method="a")]
    rec.clear()
    assert len(rec) == 0


async def test_recorder_wakes_an_async_waiter_from_another_thread() -> None:
    rec = Recorder("test")
    waiting = asyncio.ensure_future(rec.wait_for_async(2))
    await asyncio.sleep(0)
    threading.Thread(target=lambda: [rec.add(Record("cast", method=m)) for m in "ab"]).start()
    assert [r.method for r in await waiting] == ["a", "b"]


def test_recording_service_answers_with_values_functions_and_errors() -> None:
    def boom(x: int) -> int:
        raise ValueError(f"no {x}")

    with Harness(fresh_url()) as h:
        rec = h.record("stub", {"fixed": 42, "boom": boom})
        stub = h.client.proxy("stub")
        assert stub.fixed() == 42
        with pytest.raises(vertebra.RemoteError) as err:
            stub.boom(7)
        assert (err.value.type, err.value.message) == ("ValueError", "no 7")
        assert [(r.kind, r.method, r.args) for r in rec.wait_for(2)] == [
            ("call", "fixed", ()), ("call", "boom", (7,))]
        assert {m.name for m in h.client.nodes()[0].methods} == {"fixed", "boom"}


def test_record_events_is_in_force_when_it_returns() -> None:
    with Harness(fresh_url()) as h:
        rec = h.record_events("a.#")
        h.client.publish("a.b", 1)
        h.client.publish("b", 2)           # does not match: never recorded
        h.client.publish("a", 3)
        assert [(r.topic, r.payload) for r in rec.wait_for(2)] == [("a.b", 1), ("a", 3)]


def test_the_helpers_import_without_pytest() -> None:
    code = ("import sys; sys.modules['pytest'] = None\n"
            "import vertebra.testing as t\n"
            "from vertebra import Node, rpc\n"
            "class Calc(Node):\n"
            "    @rpc\n"
            "    def add(self, a, b): return a + b\n"
            "with t.Harness('memory://plain') as h:\n"
            "    h.served(Calc())\n"
            "    print(h.client.proxy('calc').add(2, 3), 'served' in t.__all__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "False"]
