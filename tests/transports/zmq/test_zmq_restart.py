"""A hub that goes away and comes back on the same port (issue 14, items 3, 4 and 7).

Casts and tasks made while it is down arrive once each; a call made while it is down is
answered once it is back; a send waiting for the hub's QUEUED never waits forever: the
wait fails with ConnectionError when the client learns the hub restarted, or after its
bound.  Synchronisation is on the transports' own state (the link is down / up again);
the one plain wait models "the hub stays down for a while"."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import zmq

import vertebra
from vertebra import Node, event, rpc, task
from vertebra.transports.zmq import Hub, ZmqTransport
from vertebra.transports.zmq import frames as F
from vertebra.wire.codec import get_codec
from vertebra.wire.envelope import Envelope

from .conftest import eventually

DOWN_FOR = 1.0   # seconds the hub stays away: long enough that many retries fail meanwhile


class Sink(Node):
    """Counts every delivery per item, duplicates included (no dedup window)."""

    name = "sink"
    dedup_window = 0.0

    def __init__(self) -> None:
        self.got: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    @task
    def record(self, item: str) -> None:
        """Count one item."""
        with self.lock:
            self.got[item] += 1

    @rpc
    def add(self, a: int, b: int) -> int:
        """a + b."""
        return a + b

    @event("restart.*")
    def on_event(self, topic: str, payload: Any) -> None:
        """Count one event."""
        with self.lock:
            self.events[str(payload)] += 1


class Restartable:
    """A hub on a fixed port that the test stops and starts again (a new hub each time)."""

    def __init__(self) -> None:
        self.hub = Hub("tcp://127.0.0.1:0").start()
        self.port = self.hub.url.rsplit(":", 1)[1]
        self.url = f"{self.hub.url}?heartbeat=0.5&confirm_timeout=0.25"

    def stop(self) -> None:
        self.hub.stop()

    def start(self) -> None:
        self.hub = Hub(f"tcp://127.0.0.1:{self.port}").start()


@pytest.fixture
def restartable() -> Iterator[Restartable]:
    r = Restartable()
    yield r
    r.hub.stop()


@pytest.fixture
async def buses(restartable: Restartable) -> AsyncIterator[Callable[..., Any]]:
    made: list[vertebra.AsyncBus] = []

    async def factory() -> vertebra.AsyncBus:
        bus = vertebra.connect_async(restartable.url, linger=2.0)
        await bus.start()
        made.append(bus)
        return bus

    yield factory
    for bus in reversed(made):
        await bus.close(linger=1.0)


def link_of(bus: vertebra.AsyncBus) -> Any:
    transport = bus.transport
    assert isinstance(transport, ZmqTransport)
    return transport.link


async def hub_down(restartable: Restartable, *buses: vertebra.AsyncBus) -> None:
    """Stop the hub; return once every bus knows it is gone."""
    restartable.stop()
    await eventually(lambda: not any(link_of(b).up for b in buses), what="the buses see the hub gone")


async def test_casts_and_tasks_made_while_the_hub_is_down_arrive_once_each(restartable, buses):
    sink = Sink()
    node = await buses()
    await node.serve(sink)
    sender = await buses()
    sender.proxy("sink").record.cast("before")
    await eventually(lambda: sink.got["before"] == 1, what="the first cast")
    await hub_down(restartable, node, sender)
    items = [f"cast-{i}" for i in range(50)]
    for item in items:
        assert sender.proxy("sink").record.cast(item)
    tasks = [f"task-{i}" for i in range(50)]
    for item in tasks:
        assert sender.cast("sink", "record", [item], kind="task")
    await asyncio.sleep(DOWN_FOR)           # down for a while: the outbox keeps retrying
    restartable.start()
    assert await sender.flush(60) == 0
    hub = restartable.hub

    def settled() -> bool:   # all 100 seen, nothing left in the hub, every delivery counted
        svc = hub.state.services.get(b"sink")
        return (all(sink.got[i] for i in items + tasks) and svc is not None and not svc.queue
                and sum(sink.got.values()) - 1 == hub.stats["routed"])

    await eventually(settled, timeout=60, what="all 100 delivered and counted")
    over = {k: v for k, v in sink.got.items() if v != 1}
    assert over == {}, f"delivered more than once: {over}"
    assert link_of(sender).stats["hub_restarts"] == 1


async def test_a_call_made_while_the_hub_is_down_is_answered_once_it_is_back(restartable, buses):
    node = await buses()
    await node.serve(Sink())
    client = await buses()
    calc = client.proxy("sink", timeout=10)
    assert await calc.add(1, 1) == 2
    await hub_down(restartable, node, client)
    call = asyncio.ensure_future(calc.add(2, 3))
    await asyncio.sleep(DOWN_FOR)
    assert not call.done()                  # retried while down: not Unreachable at once
    restartable.start()
    assert await call == 5


async def test_events_reach_subscribers_through_a_restarted_hub(restartable, buses):
    sink = Sink()
    node = await buses()
    await node.serve(sink)
    publisher = await buses()
    await hub_down(restartable, node, publisher)
    restartable.start()                     # new event ports: both buses follow them
    await eventually(lambda: link_of(node).up and link_of(publisher).up, what="both back")
    await node.transport.events.barrier()   # the subscription is in force at the new hub
    publisher.publish("restart.after", "after")
    await eventually(lambda: sink.events["after"] == 1, what="an event through the new hub")


# ---------------------------------------------------------------- a hub that never confirms


class SilentHub:
    """A ROUTER on a port that answers HELLO with WELCOME (its own hub id) and nothing else:
    no QUEUED, no heartbeats.  ``restart()`` rebinds the port with a new id."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.port = 0
        self.hub_id = "silent-1"
        self.casts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bound = threading.Event()
        self._run()

    def _run(self) -> None:
        self._stop.clear()
        self._bound.clear()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._bound.wait(10)

    def _serve(self) -> None:
        router = self.ctx.socket(zmq.ROUTER)
        router.linger = 0
        try:   # a failed bind (the port taken meanwhile) must close it: ctx.term() would hang
            if self.port:
                router.bind(f"tcp://127.0.0.1:{self.port}")
            else:
                self.port = router.bind_to_random_port("tcp://127.0.0.1")
            self._bound.set()
            while not self._stop.is_set():
                if not router.poll(20):
                    continue
                ident, *frames = router.recv_multipart()
                if frames[0] == F.header(F.HELLO):
                    welcome = {"v": 1, "id": self.hub_id, "xsub": "tcp://127.0.0.1:1",
                               "xpub": "tcp://127.0.0.1:1"}
                    router.send_multipart([ident, F.header(F.WELCOME), json.dumps(welcome).encode()])
                elif frames[0] in (F.header(F.CAST), F.header(F.TASK)):
                    self.casts += 1
        finally:
            router.close(linger=0)

    def halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def restart(self, hub_id: str) -> None:
        self.halt()
        self.hub_id = hub_id
        self._run()

    def close(self) -> None:
        self.halt()
        self.ctx.term()


@pytest.fixture
def silent_hub() -> Iterator[SilentHub]:
    hub = SilentHub()
    yield hub
    hub.close()


async def _client(silent_hub: SilentHub, **params: str) -> ZmqTransport:
    query = "&".join(f"{k}={v}" for k, v in {"heartbeat": "30", **params}.items())
    t = ZmqTransport(f"zmq://127.0.0.1:{silent_hub.port}?{query}", get_codec("json"))
    await t.connect(lambda env: None)
    return t


async def test_a_wait_for_queued_fails_when_the_hub_restarts_faster_than_heartbeats(silent_hub):
    # heartbeat 30 s, confirm_timeout 600 s: only learning of the restart can end the wait
    t = await _client(silent_hub, confirm_timeout="600")
    try:
        send = asyncio.ensure_future(t.send(Envelope("cast", service="s", method="m")))
        await eventually(lambda: silent_hub.casts == 1, what="the cast reached the hub")
        silent_hub.restart("silent-2")
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(send, 30)     # a hang guard, not a speed requirement
        assert not isinstance(send.exception(), vertebra.Unreachable)
        await eventually(lambda: t.link.up and t.link.hub_id == "silent-2", what="on the new hub")
    finally:
        await t.close()


async def test_a_wait_for_queued_is_bounded_by_confirm_timeout(silent_hub):
    t = await _client(silent_hub, confirm_timeout="0.3")
    try:
        with pytest.raises(ConnectionError, match="did not confirm"):
            await asyncio.wait_for(t.send(Envelope("task", service="s", method="m")), 30)
        assert t.stats["confirm_timeouts"] == 1
    finally:
        await t.close()


async def test_send_while_the_hub_is_down_raises_connection_error_not_unreachable(silent_hub):
    t = await _client(silent_hub)
    try:
        silent_hub.halt()
        await eventually(lambda: not t.link.up, what="the client sees the hub gone")
        for kind in ("call", "cast", "task"):
            with pytest.raises(ConnectionError) as err:
                await t.send(Envelope(kind, service="s", method="m"))
            assert not isinstance(err.value, vertebra.Unreachable)
    finally:
        await t.close()
