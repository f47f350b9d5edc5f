"""The amqp hot path's own pieces, no broker needed: publish frames packed by vertebra
are py-amqp's bytes, the loop's frame reader shares one stream with py-amqp's reads,
the first-try write, and one sweep timer for confirm deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import amqp
import pytest
from amqp.method_framing import frame_writer

from vertebra.transports.amqp.confirms import Confirms
from vertebra.transports.amqp.connection import _GulpRecv, _WriteFirst
from vertebra.transports.amqp.frames import ack_frame, publish_frames
from vertebra.transports.amqp.options import parse_url

FRAME_MAX = 131072


def py_amqp_bytes(channel: int, exchange: str, key: str, mandatory: bool, body: bytes,
                  props: dict[str, Any]) -> bytes:
    """What py-amqp's own frame writer writes for this basic.publish."""
    written: list[bytes] = []
    conn = SimpleNamespace(frame_max=FRAME_MAX, bytes_sent=0)
    write = frame_writer(conn, SimpleNamespace(write=lambda data: written.append(bytes(data))))
    args = amqp.serialization.dumps("Bssbb", (0, exchange, key, mandatory, False))
    write(1, channel, (60, 40), args, amqp.Message(body, **props))
    return b"".join(written)


@pytest.mark.parametrize(("props", "body"), [
    ({"content_type": "application/json", "delivery_mode": 2, "message_id": "m-1"}, b"x" * 100),
    ({"correlation_id": "c", "reply_to": "amq.rabbitmq.reply-to", "delivery_mode": 1,
      "message_id": "c", "expiration": "4999", "content_type": "application/msgpack",
      "priority": 7}, b"y" * 300_000),                      # body over several frames
    ({}, b""),
    ({"type": "t", "app_id": "é", "user_id": "guest", "cluster_id": "z",
      "content_encoding": "gzip"}, b"b" * (FRAME_MAX - 8)),  # one frame, to the byte
    ({"priority": 0, "message_id": None}, b"b" * (FRAME_MAX - 7)),
])
@pytest.mark.parametrize("mandatory", [False, True])
def test_publish_frames_are_the_bytes_py_amqp_writes(props: dict[str, Any], body: bytes,
                                                     mandatory: bool) -> None:
    mine = publish_frames(5, "vertebra.events", "call.echo", mandatory, body, props, FRAME_MAX)
    assert mine == py_amqp_bytes(5, "vertebra.events", "call.echo", mandatory, body, props)


@pytest.mark.parametrize(("props", "body"), [
    ({"application_headers": {"a": 1}}, b"x"),   # a table: py-amqp encodes it
    ({"timestamp": 1}, b"x"),
    ({"message_id": "m" * 256}, b"x"),            # longer than a shortstr
    ({"delivery_mode": 2.0}, b"x"),
    ({"priority": True}, b"x"),
    ({"no_such_property": "x"}, b"x"),
    ({}, "a str body"),
])
def test_publish_frames_leave_to_py_amqp_what_they_do_not_encode(props: dict[str, Any],
                                                                 body: Any) -> None:
    assert publish_frames(1, "", "q", False, body, props, FRAME_MAX) is None


@pytest.mark.parametrize(("tag", "multiple"), [(1, False), (2**40 + 7, True)])
def test_ack_frames_are_the_bytes_py_amqp_writes(tag: int, multiple: bool) -> None:
    written: list[bytes] = []
    conn = SimpleNamespace(frame_max=FRAME_MAX, bytes_sent=0)
    write = frame_writer(conn, SimpleNamespace(write=lambda data: written.append(bytes(data))))
    write(1, 9, (60, 80), amqp.serialization.dumps("Lb", (tag, multiple)), None)
    assert ack_frame(9, tag, multiple) == b"".join(written)


def frame(kind: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + bytes((end,))


@contextlib.contextmanager
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(5)   # what the connection does: a timeout, non-blocking underneath
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_the_frame_reader_cuts_whole_frames_and_keeps_a_partial_one_for_later() -> None:
    with pair() as (a, b):
        gulp = _GulpRecv(a.recv, a.fileno())
        assert not gulp.fill() and gulp.next_frame() is None        # nothing there: no wait
        one, two = frame(1, 1, b"method"), frame(3, 2, b"body" * 10)
        b.sendall(one + two[:5])
        assert gulp.fill()
        assert gulp.next_frame() == (1, 1, b"method")
        assert gulp.next_frame() is None                            # a partial frame waits
        b.sendall(two[5:])
        assert gulp.fill() and gulp.next_frame() == (3, 2, b"body" * 10)


def test_py_amqp_reads_what_the_loop_reader_left_and_the_other_way_round() -> None:
    # a declaration waiting for its answer reads through py-amqp from the same buffer
    with pair() as (a, b):
        gulp = _GulpRecv(a.recv, a.fileno())
        b.sendall(frame(1, 1, b"first") + frame(1, 1, b"second")[:4])
        assert gulp.fill() and gulp.next_frame() == (1, 1, b"first")
        b.sendall(frame(1, 1, b"second")[4:] + frame(1, 1, b"third"))
        def read(n: int) -> bytes:                  # py-amqp's _read: until it has n bytes
            got = b""
            while len(got) < n:
                got += gulp(n - len(got))
            return got

        assert read(7) == struct.pack(">BHI", 1, 1, 6)   # the partial frame, then the socket
        assert read(7) == b"second\xce"
        assert gulp.next_frame() == (1, 1, b"third")   # what py-amqp's read took in with it


def test_the_frame_reader_refuses_a_bad_frame_end_and_reports_a_closed_socket() -> None:
    with pair() as (a, b):
        gulp = _GulpRecv(a.recv, a.fileno())
        b.sendall(frame(1, 1, b"x", end=0x00))
        assert gulp.fill()
        with pytest.raises(amqp.exceptions.UnexpectedFrame):
            gulp.next_frame()
        b.close()
        with pytest.raises(ConnectionResetError):
            gulp.fill()


def test_the_first_try_write_hands_what_the_kernel_did_not_take_to_sendall() -> None:
    with pair() as (a, b):
        rest: list[bytes] = []
        write = _WriteFirst(a.fileno(), lambda data: rest.append(bytes(data)))
        write(b"hello")
        assert b.recv(100) == b"hello" and not rest
        big = os.urandom(8 << 20)                   # more than the socket buffers hold
        write(big)
        assert rest and len(rest[0]) < len(big) and big.endswith(rest[0])


class _Link:
    """What Confirms needs of a Link; publishes go nowhere."""

    def __init__(self, confirm_timeout: float) -> None:
        self.opts = parse_url(f"amqp://h/?confirm_timeout={confirm_timeout}")
        self.stats = {"confirm_timeouts": 0, "nacked": 0}
        self.loop = asyncio.get_running_loop()
        self.conn = SimpleNamespace(direct=contextlib.nullcontext)
        self.inbox: list[Any] = []

    async def ready(self) -> None:
        pass

    def guard(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def publish(self, ch: Any, body: bytes, exchange: str, key: str, **props: Any) -> None:
        pass


def _channel() -> SimpleNamespace:
    return SimpleNamespace(confirm_select=lambda: None,
                           events={"basic_ack": set(), "basic_nack": set(), "basic_return": set()})


async def test_each_overdue_confirm_fails_at_its_own_deadline_with_one_timer() -> None:
    link = _Link(confirm_timeout=0.2)
    confirms = Confirms(link)  # type: ignore[arg-type]
    ch = _channel()
    confirms.attach(ch)
    first = asyncio.ensure_future(confirms.publish(b"a", "", "q"))
    await asyncio.sleep(0.1)
    later = [asyncio.ensure_future(confirms.publish(b"b", "", "q")) for _ in range(2)]
    await asyncio.sleep(0)
    timers = [h for h in link.loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    assert len(timers) == 1                          # one sweep, not a timer per publish
    for callback in list(ch.events["basic_ack"]):
        callback(2, False)                           # the second is confirmed in time
    with pytest.raises(ConnectionError, match="no confirm"):
        await first                                  # at 0.2 s
    assert not later[1].done()                       # its deadline is 0.1 s later
    results = await asyncio.gather(*later, return_exceptions=True)
    assert results[0] is None and isinstance(results[1], ConnectionError)
    assert link.stats["confirm_timeouts"] == 2 and len(confirms) == 0
