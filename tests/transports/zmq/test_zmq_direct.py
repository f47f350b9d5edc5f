"""Direct calls: a call goes from its caller straight to a replica's own endpoint, the hub
stays the directory and the fallback (docs/protocol/zmq.md §2b)."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from urllib.parse import quote

import pytest
import zmq
import zmq.asyncio

from vertebra.transports.zmq import Hub, keygen
from vertebra.transports.zmq import frames as F
from vertebra.transports.zmq.keys import load_keypair
from vertebra.wire.codec import get_codec
from vertebra.wire.envelope import Envelope
from vertebra.wire.info import ServiceInfo

from .conftest import Client, eventually
from .test_zmq_routing import echo_handler


def routed_directly(client: Client, service: str, replicas: int = 1) -> bool:
    """Whether the client has direct routes to ``replicas`` replicas of ``service``, each
    connected (until then calls go through the hub)."""
    assert client.t.direct is not None
    r = client.t.direct._routes.get(service)
    return r is not None and len(r.replicas) == replicas and all(
        rep.dealer.sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT for rep, _ in r.replicas)


async def warm(client: Client, service: str, replicas: int = 1) -> None:
    """Call until :func:`routed_directly`."""
    deadline = time.monotonic() + 10
    while True:
        await client.call(service, "m", "warm-up")
        if routed_directly(client, service, replicas):
            return
        assert time.monotonic() < deadline, "the routes never came"
        await asyncio.sleep(0.05)


async def until_routed_directly(client: Client, service: str) -> None:
    """Wait (not calling: the calls so far are still running) until :func:`routed_directly`."""
    deadline = time.monotonic() + 10
    while not routed_directly(client, service):
        assert time.monotonic() < deadline, f"no direct route to {service}"
        await asyncio.sleep(0.05)


async def test_calls_go_straight_to_the_replica_not_through_the_hub(hub, open_client):
    counts: collections.Counter = collections.Counter()
    node = await open_client()
    await node.t.serve(ServiceInfo("calc"), echo_handler(counts, "n"))
    client = await open_client()
    await warm(client, "calc")
    routed, direct = hub.stats["routed"], client.t.stats["direct_calls"]
    for i in range(20):
        assert (await client.call("calc", "m", i)).result == ["n", i]
    assert hub.stats["routed"] == routed            # the hub delivered none of them
    assert client.t.stats["direct_calls"] == direct + 20
    assert node.t.stats["direct_served"] >= 20


async def test_direct_calls_take_turns_over_the_replicas(hub, open_client):
    counts: collections.Counter = collections.Counter()
    for name in ("r1", "r2", "r3"):
        node = await open_client()
        await node.t.serve(ServiceInfo("calc"), echo_handler(counts, name))
    client = await open_client()
    await warm(client, "calc", replicas=3)
    counts.clear()
    for i in range(30):
        assert (await client.call("calc", "m", i)).kind == "reply"
    assert counts == {"r1": 10, "r2": 10, "r3": 10}


async def test_calls_in_flight_go_to_the_least_busy_replica_up_to_its_prefetch(hub, open_client):
    counts: collections.Counter = collections.Counter()

    tasks: set[asyncio.Task[None]] = set()

    def slow(name: str):
        async def work(inc):
            counts[name] += 1
            await asyncio.sleep(0.05)
            await inc.reply(inc.envelope.answer(name))
            await inc.ack()

        async def handle(inc):    # like a node's runtime: start the work, return at once
            task = asyncio.create_task(work(inc))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return handle

    for name in ("a", "b"):
        node = await open_client()
        await node.t.serve(ServiceInfo("slow"), slow(name), prefetch=4)
    client = await open_client()
    await warm(client, "slow", replicas=2)
    counts.clear()
    sent = [Envelope("call", service="slow", method="m", args=[i], deadline=time.time() + 20)
            for i in range(40)]
    for env in sent:
        await client.t.send(env)
    # the caller holds no more calls in flight on a replica than its prefetch; the rest go
    # through the hub, which keeps its own credit (what runs at once is the node's
    # concurrency: its runtime holds the surplus)
    assert [len(r.inflight) for r in client.t.direct._replicas.values()] == [4, 4]
    answers = [await asyncio.wait_for(client.answers.get(), 20) for _ in sent]
    assert {a.re for a in answers} == {e.id for e in sent}
    assert all(a.kind == "reply" for a in answers)
    assert counts["a"] >= 8 and counts["b"] >= 8      # both replicas worked
    assert client.t.stats["hub_calls"] > 1             # the rest waited in the hub for credit


async def test_direct_0_and_a_replica_without_an_endpoint_go_through_the_hub(hub, open_client):
    counts: collections.Counter = collections.Counter()
    plain = await open_client(hub.url + "?heartbeat=0.2&direct=0")
    await plain.t.serve(ServiceInfo("calc"), echo_handler(counts, "plain"))
    client = await open_client()
    for i in range(10):
        assert (await client.call("calc", "m", i)).kind == "reply"
        await asyncio.sleep(0.03)
    assert client.t.stats["direct_calls"] == 0 and client.t.stats["hub_calls"] == 10
    # a second replica with an endpoint: still all through the hub, which spreads them
    node = await open_client()
    await node.t.serve(ServiceInfo("calc"), echo_handler(counts, "direct"))
    await asyncio.sleep(0.5)                            # two route refreshes
    counts.clear()
    for i in range(10):
        assert (await client.call("calc", "m", i)).kind == "reply"
    assert client.t.stats["direct_calls"] == 0
    assert counts == {"plain": 5, "direct": 5}


async def test_a_replica_that_unserved_redirects_its_calls_through_the_hub(hub, open_client):
    counts: collections.Counter = collections.Counter()
    leaving = await open_client()
    await leaving.t.serve(ServiceInfo("calc"), echo_handler(counts, "leaving"))
    staying = await open_client()
    await staying.t.serve(ServiceInfo("calc"), echo_handler(counts, "staying"))
    client = await open_client()
    await warm(client, "calc", replicas=2)
    await leaving.t.unserve("calc")
    counts.clear()
    for i in range(10):           # sent before the client's routes are refreshed
        assert (await client.call("calc", "m", i)).result == ["staying", i]
    assert counts == {"staying": 10}
    assert client.t.stats["direct_redirected"] >= 1
    assert leaving.t.stats["direct_redirects_sent"] >= 1


async def test_a_replica_killed_mid_call_is_unreachable_at_once_not_a_timeout(hub, open_client, procs):
    worker = procs(hub.url + "?heartbeat=0.2", "calc", "hold")    # takes calls, never answers
    await worker.wait_for("ready")
    client = await open_client()
    first = Envelope("call", service="calc", method="m", args=["first"], deadline=time.time() + 20)
    await client.t.send(first)              # through the hub (no routes yet); fetches them
    await worker.wait_for("got first")
    await until_routed_directly(client, "calc")   # the route is in and its connection up
    env = Envelope("call", service="calc", method="m", args=["doomed"], deadline=time.time() + 20)
    await client.t.send(env)
    assert client.t.stats["direct_calls"] == 1
    await worker.wait_for("got doomed")
    worker.kill()
    answers = {}
    while len(answers) < 2:
        answer = await asyncio.wait_for(client.answers.get(), 20)   # never the deadline
        answers[answer.re] = answer
    assert {a.error["code"] for a in answers.values()} == {"unreachable"}
    assert client.t.stats["direct_lost"] == 1                       # seen by the caller itself


async def test_a_draining_replica_still_answers_the_direct_calls_it_holds(hub, open_client):
    tasks: set[asyncio.Task[None]] = set()

    async def slow_reply(inc):
        await asyncio.sleep(1.0)                # several route refreshes (heartbeat 0.2 s)
        await inc.reply(inc.envelope.answer("done"))
        await inc.ack()

    async def handle(inc):
        if inc.envelope.args == ["warm-up"]:
            await inc.reply(inc.envelope.answer("warm"))
            await inc.ack()
            return
        task = asyncio.create_task(slow_reply(inc))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    node = await open_client()
    await node.t.serve(ServiceInfo("calc"), handle)
    client = await open_client()
    await warm(client, "calc")
    env = Envelope("call", service="calc", method="m", args=["slow"], deadline=time.time() + 20)
    await client.t.send(env)
    assert client.t.stats["direct_calls"] >= 1
    await asyncio.sleep(0.1)
    await node.t.unserve("calc")                # the hub stops listing it; it still holds the call
    answer = await asyncio.wait_for(client.answers.get(), 20)
    assert answer.re == env.id and answer.kind == "reply" and answer.result == "done"
    assert client.t.stats["direct_lost"] == 0


async def test_a_hung_replica_is_unreachable_by_the_connections_heartbeats(hub, open_client, procs):
    worker = procs(hub.url + "?heartbeat=0.2", "calc", "hold")
    await worker.wait_for("ready")
    client = await open_client()
    first = Envelope("call", service="calc", method="m", args=["first"], deadline=time.time() + 30)
    await client.t.send(first)                  # through the hub; fetches the routes
    await worker.wait_for("got first")
    await until_routed_directly(client, "calc")   # the route is in and its connection up
    env = Envelope("call", service="calc", method="m", args=["stuck"], deadline=time.time() + 30)
    await client.t.send(env)
    await worker.wait_for("got stuck")
    worker.p.send_signal(signal.SIGSTOP)        # alive, connected, answering nothing
    answers = {}
    while env.id not in answers:
        answer = await asyncio.wait_for(client.answers.get(), 20)   # not the 30 s deadline
        answers[answer.re] = answer
    assert answers[env.id].error["code"] == "unreachable"
    assert client.t.stats["direct_lost"] == 1


@pytest.fixture
def keys(tmp_path):
    return {name: keygen(str(tmp_path / name)) for name in ("hub", "node", "alice", "mallory")}


def _url(hub: Hub, server_pub: bytes, key_file: str) -> str:
    return (f"{hub.url}?heartbeat=0.2&server_key={quote(server_pub.decode(), safe='')}"
            f"&key_file={quote(key_file)}")


async def test_curve_and_the_allow_list_hold_on_the_direct_path(keys, open_client):
    hub_pub, _ = load_keypair(keys["hub"][1])
    with Hub("tcp://127.0.0.1:0", heartbeat=0.2, curve_secret_key_file=keys["hub"][1],
             allow=[keys["node"][0], keys["alice"][0]]) as hub:
        counts: collections.Counter = collections.Counter()
        node = await open_client(_url(hub, hub_pub, keys["node"][1]))
        await node.t.serve(ServiceInfo("calc"), echo_handler(counts, "n"))
        client = await open_client(_url(hub, hub_pub, keys["alice"][1]))
        await warm(client, "calc")
        direct = client.t.stats["direct_calls"]
        assert (await client.call("calc", "m", 1)).result == ["n", 1]
        assert client.t.stats["direct_calls"] == direct + 1
        endpoint = node.t._endpoint.announce
        node_pub = endpoint["key"].encode()
        assert node_pub == load_keypair(keys["node"][1])[0]

        async def raw_call(key_file: str | None) -> bool:
            """A raw DEALER calling the node's endpoint: answered within 2 s?"""
            ctx = zmq.asyncio.Context()
            try:
                d = ctx.socket(zmq.DEALER)
                d.linger = 0
                if key_file is not None:
                    d.curve_publickey, d.curve_secretkey = load_keypair(key_file)
                    d.curve_serverkey = node_pub
                d.connect(endpoint["endpoint"])
                body = get_codec("json").encode(Envelope("call", id="raw-1", service="calc",
                                                         method="m", args=[7]))
                await d.send_multipart([F.header(F.CALL), b"calc", b"raw-1", body])
                return await d.poll(2000) != 0
            finally:
                ctx.destroy(linger=0)

        assert await raw_call(keys["alice"][1])          # allow-listed: served
        assert not await raw_call(keys["mallory"][1])    # a key not on the list: nothing
        assert not await raw_call(None)                  # plain TCP: nothing


async def test_deadlines_and_cancels_hold_on_the_direct_path():
    import vertebra
    from vertebra import CallTimeout, Node, rpc

    class Slow(Node):
        name = "slow"
        stopped = 0

        @rpc
        async def ping(self) -> str:
            return "pong"

        @rpc
        async def nap(self, seconds: float) -> str:
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                Slow.stopped += 1
                raise
            return "rested"

    with Hub("tcp://127.0.0.1:0", heartbeat=0.2) as hub:
        async with vertebra.connect_async(hub.url) as node, vertebra.connect_async(hub.url) as bus:
            await node.serve(Slow())
            proxy = bus.proxy("slow")
            deadline = time.monotonic() + 10
            while bus.transport.stats["direct_calls"] == 0:
                assert time.monotonic() < deadline
                assert await proxy.ping() == "pong"
            direct, via_hub = bus.transport.stats["direct_calls"], bus.transport.stats["hub_calls"]
            with pytest.raises(CallTimeout):
                await proxy.nap.options(timeout=0.3)(30)
            task = asyncio.ensure_future(proxy.nap(30))
            await eventually(lambda: Slow.stopped == 1)        # the deadline stopped the first
            await asyncio.sleep(0.2)
            task.cancel()                                      # a cancel stops the second
            await eventually(lambda: Slow.stopped == 2)
            assert bus.transport.stats["direct_calls"] == direct + 2
            assert bus.transport.stats["hub_calls"] == via_hub
