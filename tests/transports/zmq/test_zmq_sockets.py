"""LoopSocket: plain zmq sockets on the asyncio loop lose no message to ZMQ_FD's edge trigger.

The hazard: ZMQ_FD signals a change of state once, and a send on the socket can consume
that signal for input that arrived meanwhile; a reader that then waits on the FD waits for
ever with messages queued.  These tests send and receive on the same sockets at once, in
both directions, and count every message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
import zmq
import zmq.asyncio

from vertebra.transports.zmq.sockets import DRAIN, LoopSocket

N = 5 * DRAIN + 17


def _pair(ctx: zmq.Context[zmq.Socket[bytes]]) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    a: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.DEALER)
    b: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.DEALER)
    for s in (a, b):
        s.sndhwm = s.rcvhwm = 0
        s.linger = 0
    port = a.bind_to_random_port("tcp://127.0.0.1")
    b.connect(f"tcp://127.0.0.1:{port}")
    return a, b


@pytest.fixture
def ctx() -> Iterator[zmq.asyncio.Context]:
    c = zmq.asyncio.Context()
    yield c
    c.term()


async def test_both_ends_send_and_receive_at_once_and_every_message_arrives(ctx: zmq.asyncio.Context) -> None:
    a_sock, b_sock = _pair(ctx)
    a, b = LoopSocket(a_sock), LoopSocket(b_sock)
    got: dict[str, list[int]] = {"a": [], "b": []}
    done = {"a": asyncio.Event(), "b": asyncio.Event()}

    def receiver(name: str, own: LoopSocket) -> Callable[[list[bytes]], Awaitable[None]]:
        async def handle(msg: list[bytes]) -> None:
            n = int(msg[1])
            got[name].append(n)
            if n % 3 == 0:
                own.send([b"x", b"-1"])     # a handler that sends on the socket it reads
            if sum(1 for k in got[name] if k >= 0) == N:
                done[name].set()
        return handle

    b.send([b"hello"])                      # a (the bound end) has a peer once this is in
    assert await asyncio.wait_for(first_message(a), 10) == [b"hello"]
    tasks = [asyncio.create_task(a.receive_forever(receiver("a", a))),
             asyncio.create_task(b.receive_forever(receiver("b", b)))]

    async def sender(sock: LoopSocket) -> None:
        for i in range(N):
            sock.send([b"n", str(i).encode()])
            if i % 50 == 0:
                await asyncio.sleep(0)

    try:
        await asyncio.gather(sender(a), sender(b))
        await asyncio.wait_for(asyncio.gather(done["a"].wait(), done["b"].wait()), 20)
        for name in ("a", "b"):
            assert [k for k in got[name] if k >= 0] == list(range(N))   # all, in order
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        a.close(0)
        b.close(0)


async def first_message(sock: LoopSocket) -> list[bytes]:
    """The next message ``sock`` receives (its receive loop, stopped after one)."""
    got: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()

    async def handle(msg: list[bytes]) -> None:
        if not got.done():
            got.set_result(msg)

    reading = asyncio.create_task(sock.receive_forever(handle))
    try:
        return await got
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)


async def test_a_waiting_reader_gets_a_message_with_all_its_frames(ctx: zmq.asyncio.Context) -> None:
    a_sock, b_sock = _pair(ctx)
    a, b = LoopSocket(a_sock), LoopSocket(b_sock)
    try:
        later = asyncio.create_task(first_message(b))
        await asyncio.sleep(0.05)
        assert not later.done()
        a.send([b"one", b"", b"three" * 1000])
        assert await asyncio.wait_for(later, 10) == [b"one", b"", b"three" * 1000]
    finally:
        a.close(0)
        b.close(0)


async def test_a_handler_in_the_reader_callback_gets_every_message_in_order(
        ctx: zmq.asyncio.Context) -> None:
    a_sock, b_sock = _pair(ctx)
    a, b = LoopSocket(a_sock), LoopSocket(b_sock)
    got: list[int] = []
    done = asyncio.Event()

    def handle(msg: list[bytes]) -> None:
        got.append(int(msg[0]))
        if int(msg[0]) % 7 == 0:
            a.send([b"-1"])                 # a send from inside the callback: no re-entry
        if len(got) == N:
            done.set()

    a.on_message(handle)             # a is the bound end: b sends, a reads
    try:
        for i in range(N):
            b.send([str(i).encode()])
            if i % 100 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 20)
        assert got == list(range(N))
    finally:
        a.close(0)
        b.close(0)


async def test_a_send_that_cannot_go_raises_again_at_once(ctx: zmq.asyncio.Context) -> None:
    s: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.DEALER)
    s.setsockopt(zmq.IMMEDIATE, 1)
    s.linger = 0
    s.connect("tcp://127.0.0.1:9")          # nothing listens: no peer to queue for
    sock = LoopSocket(s)
    try:
        with pytest.raises(zmq.Again):
            sock.send([b"x"])
        await sock.writable(0.05)            # returns after its timeout, still not writable
        assert not s.getsockopt(zmq.EVENTS) & zmq.POLLOUT
    finally:
        sock.close(0)


async def test_confirmations_time_out_in_order_and_answered_ones_do_not() -> None:
    from vertebra.transports.zmq.waiters import Waiters

    loop = asyncio.get_running_loop()
    waiters: Waiters[None] = Waiters(timeout=0.2)
    added = {b"a": loop.time()}
    first, second = waiters.add(b"a"), waiters.add(b"b")
    await asyncio.sleep(0.1)
    added[b"c"] = loop.time()
    third = waiters.add(b"c")
    assert waiters.resolve(b"b", None)
    ended: dict[bytes, float] = {}
    for key, fut in ((b"a", first), (b"c", third)):
        fut.add_done_callback(lambda _, key=key: ended.setdefault(key, loop.time()))
    for fut in (first, third):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(fut, 10)
    assert second.result() is None
    assert ended[b"a"] <= ended[b"c"]
    for key in (b"a", b"c"):                 # not one before its own time
        assert ended[key] >= added[key] + 0.2 - 0.002
    for key, fut in ((b"a", first), (b"b", second), (b"c", third)):
        waiters.discard(key, fut)
    assert len(waiters) == 0
