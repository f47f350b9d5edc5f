"""One py-amqp connection driven by the asyncio loop, with heartbeats and reconnection.

py-amqp is a blocking client.  Here its socket is registered with the event loop
(``loop.add_reader``): when the socket is readable the loop thread reads what is there
and hands every whole frame to py-amqp's frame handler, which dispatches it to the
callbacks the transport registered, on the loop thread.  On plain TCP that is one
``read`` per wake-up into :class:`_GulpRecv`, whose frames are cut out here (a partial
frame stays there for the next wake-up, or for py-amqp's own reads); on TLS it is
``drain_events(timeout=0)`` per frame (py-amqp keeps a partial frame in its buffer and
raises ``socket.timeout`` when nothing more is there).  Writes are py-amqp's own
``sendall`` on the loop thread.  Only the TCP/TLS/AMQP handshake runs in a worker thread.
Measured against one I/O thread per connection handing frames across with
``call_soon_threadsafe`` (see docs/transports/amqp.md), this saves two thread hops per
round trip and the GIL ping-pong between them.

What may block the loop briefly: the synchronous declarations (queue/exchange declare,
basic.consume, basic.qos) at serve/subscribe time and after a reconnect — one broker round
trip each — a write to a socket whose kernel buffer is full, and a frame that arrived in
part on TLS (py-amqp waits for its rest).  Every such wait is bounded by the socket
timeout (``max(10 s, connect_timeout)``); past it the connection counts as lost.  Writes
are coalesced: those made while frames are handled go out in one ``sendall`` at the end
of that read; elsewhere the first write since the last read goes out at once (a lone
call does not wait for the next loop iteration) and later ones together at the end of
their loop step.  On plain TCP a ``sendall`` is first tried as one non-blocking
``write`` (no ``poll`` before it); only what the kernel did not take waits.  A broker
that blocks publishers (``connection.blocked``, memory or disk alarm) is honoured:
:attr:`writable` is cleared until ``connection.unblocked``.

On loss (socket error, missed heartbeats, a channel or connection exception) every
handle is dropped, ``on_down`` runs, and the connection is re-opened with vertebra's one
backoff schedule (:class:`vertebra.backoff.Backoff`: 0.1 s doubling, capped at
``reconnect_max``, full jitter); ``on_up`` then re-declares the topology and resumes
consuming.  When the URL names several brokers (a cluster), each attempt tries them all
in ring order starting with the one after the broker that was lost (:mod:`.dial`), so a
bus whose node died is on another node after the first backoff delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

from amqp.exceptions import UnexpectedFrame
from amqp.transport import TCPTransport

from ...backoff import Backoff
from .dial import connect_any
from .options import AmqpOptions

__all__ = ["LoopConnection"]

log = logging.getLogger("vertebra.transports.amqp")

_MAX_FRAMES_PER_WAKEUP = 512


_FRAME_HEADER = struct.Struct(">BHI")   # type, channel, payload size
_FRAME_END = 0xCE


class _GulpRecv:
    """``sock.recv`` for py-amqp's TCP transport that reads up to 64 KiB at once and hands
    it out in the small pieces py-amqp asks for (a frame header, then its payload): about
    one syscall per wake-up instead of two per frame.

    The loop's reader takes whole frames from the same buffer (:meth:`fill`,
    :meth:`next_frame`), so bytes read ahead by one side are never lost to the other:
    py-amqp's own blocking reads (a declaration waiting for its answer) and the loop's
    non-blocking ones share one stream."""

    __slots__ = ("_buf", "_fd", "_pos", "_recv")

    def __init__(self, recv: Callable[[int], bytes], fd: int = -1) -> None:
        self._recv = recv
        self._fd = fd
        self._buf = b""
        self._pos = 0

    def __call__(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            buf = self._recv(65536)
            if not buf:
                return buf
            self._buf, pos = buf, 0
        out = buf[pos:pos + n]
        self._pos = pos + len(out)
        return out

    def fill(self) -> bool:
        """One non-blocking ``read`` of what the socket holds, kept after any partial frame;
        False when there was nothing.  OSError when the broker closed the connection."""
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return False
        if not data:
            raise ConnectionResetError("the broker closed the connection")
        rest = self._buf[self._pos:]
        self._buf = rest + data if rest else data
        self._pos = 0
        return True

    def next_frame(self) -> tuple[int, int, bytes] | None:
        """The next whole frame held (type, channel, payload), or None until more is read;
        UnexpectedFrame when the stream is not AMQP framing."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 7:
            return None
        kind, channel, size = _FRAME_HEADER.unpack_from(buf, pos)
        end = pos + 8 + size
        if end > len(buf):
            return None
        if buf[end - 1] != _FRAME_END:
            raise UnexpectedFrame(f"bad frame end byte {buf[end - 1]:#x}")
        self._pos = end
        return kind, channel, buf[pos + 7:end - 1]


def _gone(data: Any) -> None:
    """The write of a connection that is gone (its descriptor may be reused already)."""
    raise ConnectionResetError("amqp connection is closed")


class _WriteFirst:
    """``sock.sendall`` for plain TCP that first tries one non-blocking ``write`` of the
    whole buffer: a socket with a timeout polls before every send, and the kernel buffer
    almost always has room.  What it did not take goes through ``sendall`` (bounded by
    the socket timeout)."""

    __slots__ = ("_fd", "_sendall")

    def __init__(self, fd: int, sendall: Callable[[Any], None]) -> None:
        self._fd = fd
        self._sendall = sendall

    def __call__(self, data: Any) -> None:
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            self._sendall(memoryview(data)[n:])


class LoopConnection:
    """A py-amqp :class:`amqp.Connection` that lives on an asyncio loop and re-opens itself.

    ``on_up(conn)`` runs on the loop thread after every successful (re)connect and must
    declare everything and start consumers; ``on_down(exc)`` runs once per loss.
    """

    def __init__(self, opts: AmqpOptions, on_up: Callable[[Any], None],
                 on_down: Callable[[BaseException], None], stats: dict[str, int],
                 backoff: Backoff | None = None) -> None:
        self.opts = opts
        self.backoff = backoff or Backoff(base=0.1, cap=opts.reconnect_max)
        self._on_up = on_up
        self._on_down = on_down
        self._stats = stats
        self.conn: Any = None
        self.broker = 0
        """Index (in ``opts.addresses``) of the broker connected to, or last connected to."""
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False
        self.writable = asyncio.Event()
        self.up_event = asyncio.Event()
        self.after_read: Callable[[], None] = lambda: None
        self._wbuf: list[bytes] = []
        self._sendall: Callable[[Any], None] = _gone
        self._direct = 0
        self._flush_scheduled = False
        self._reading = False
        self._sent_at_once = False
        self._gulp: _GulpRecv | None = None

    @property
    def up(self) -> bool:
        """Whether a live connection is open right now."""
        return self.conn is not None

    @property
    def address(self) -> str:
        """``host:port`` of the broker connected to (or last connected to)."""
        return self.opts.addresses[self.broker]

    # -- opening --------------------------------------------------------------------------

    def _new(self, start: int) -> tuple[Any, int]:
        return connect_any(self.opts, start, on_blocked=self._blocked,
                           on_unblocked=self._unblocked)

    async def start(self) -> None:
        """Open the first connection (to the first broker of the URL that accepts);
        ConnectionError if none can be reached."""
        self._loop = asyncio.get_running_loop()
        conn, self.broker = await asyncio.to_thread(self._new, 0)
        self._attach(conn)
        if self.conn is None:
            raise ConnectionError(f"cannot set up the amqp topology on {self.address}")
        if self.opts.heartbeat:
            self._spawn(self._heartbeats())

    def _attach(self, conn: Any) -> None:
        assert self._loop is not None
        self.conn = conn
        self._fd = conn.sock.fileno()
        # Bound every blocking read or write on the loop thread: a broker that stops
        # answering in the middle of a declaration must not freeze the loop for ever.
        conn.sock.settimeout(max(10.0, self.opts.connect_timeout))
        self._wbuf.clear()
        self._sendall = conn.transport._write
        conn.transport._write = self._buffered_write
        self._gulp = None
        if hasattr(conn.transport, "_quick_recv"):   # read in 64 KiB gulps
            gulp = _GulpRecv(conn.transport._quick_recv, self._fd)
            conn.transport._quick_recv = gulp
            if isinstance(conn.transport, TCPTransport):   # not TLS: the descriptor itself
                # A socket with a timeout is non-blocking underneath (Python waits with
                # poll): said outright, since the loop reads and writes the descriptor.
                os.set_blocking(self._fd, False)
                self._gulp = gulp
                self._sendall = _WriteFirst(self._fd, self._sendall)
        self._loop.add_reader(self._fd, self.readable)
        self.writable.set()
        try:
            with self.direct():
                self._on_up(conn)
        except Exception as exc:
            self.lost(exc)
            return
        self.up_event.set()
        self._loop.call_soon(self.readable)   # frames read during declarations

    def _spawn(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reading --------------------------------------------------------------------------

    def readable(self) -> None:
        """Read every complete frame available now, then hand the deliveries over.

        py-amqp runs its callbacks while the frames are read; the transport's callbacks
        only collect, and ``after_read`` does the work.  Frames come from one read of the
        socket (plain TCP: :meth:`_read_frames`) or from ``drain_events(timeout=0)`` (TLS,
        whose own buffer may hold more than the socket shows).  What is written meanwhile
        goes out in one ``sendall`` before the handlers run and one after.
        """
        conn = self.conn
        if conn is None:
            return
        more = False
        self._reading = True
        self._sent_at_once = False
        try:
            more = self._read_frames(conn) if self._gulp is not None else self._drain(conn)
        except Exception as exc:
            if conn is self.conn:
                self.lost(exc)
        finally:
            try:
                self.flush()       # acks sent from confirm callbacks go before any handler runs
                self.after_read()
            finally:
                self._reading = False
                self.flush()   # answers and acks written while handling: one sendall, now
        if more and self._loop is not None:   # more may be buffered: come back soon
            self._loop.call_soon(self.readable)

    def _read_frames(self, conn: Any) -> bool:
        """Hand py-amqp every whole frame held and read once (level-triggered: a socket
        with more to read wakes the loop again); True when the frame limit cut it short."""
        gulp = self._gulp
        assert gulp is not None
        if conn.transport._read_buffer:   # py-amqp kept part of a frame itself: its way
            return self._drain(conn)
        on_frame = conn.on_inbound_frame
        filled = False
        for _ in range(_MAX_FRAMES_PER_WAKEUP):
            frame = gulp.next_frame()
            if frame is None:
                if filled or not gulp.fill():
                    return False
                filled = True
                continue
            on_frame(frame)
            if conn is not self.conn:
                return False
        return True

    def _drain(self, conn: Any) -> bool:
        """``drain_events(timeout=0)`` until nothing is left (TLS); True when cut short."""
        for _ in range(_MAX_FRAMES_PER_WAKEUP):
            try:
                conn.drain_events(timeout=0)
            except TimeoutError:   # socket.timeout: nothing more to read
                return False
            if conn is not self.conn:
                return False
        return True

    # -- writing: coalesced into few sendalls, the first of a step at once -----------------

    def _buffered_write(self, data: Any) -> None:
        """py-amqp's ``_write``: at once inside :meth:`direct` and for the first write since
        the last read; else kept for the ``sendall`` at the end of the read or of the step."""
        if self._direct:
            self._flush_now()
            self._sendall(data)
            return
        if self._reading:   # readable() flushes when the frames are handled
            self._wbuf.append(bytes(data))   # py-amqp hands over a view of a reused buffer
            return
        if not self._sent_at_once and not self._wbuf:
            # the first write since the last read (a lone call, the first of a burst): no
            # reason to wait for the end of the step; the rest of a burst waits for it
            self._sent_at_once = True
            try:
                self._sendall(data)
            except Exception as exc:
                self.lost(exc)
                raise
            return
        self._wbuf.append(bytes(data))
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def _flush_now(self) -> None:
        if self._wbuf:
            data = b"".join(self._wbuf)
            self._wbuf.clear()
            self._sendall(data)

    def flush(self) -> None:
        """Send what was written since the last flush (one syscall)."""
        self._flush_scheduled = False
        if self.conn is None:
            self._wbuf.clear()
            return
        try:
            self._flush_now()
        except Exception as exc:
            self.lost(exc)

    @contextlib.contextmanager
    def direct(self) -> Iterator[None]:
        """Writes go out at once inside this block: for py-amqp calls that wait for an answer."""
        self._direct += 1
        try:
            self._flush_now()
            yield
        finally:
            self._direct -= 1

    def _blocked(self, reason: str = "") -> None:
        log.warning("broker blocked publishing: %s", reason)
        self.writable.clear()

    def _unblocked(self) -> None:
        log.info("broker unblocked publishing")
        self.writable.set()

    async def _heartbeats(self) -> None:
        interval = max(0.5, self.opts.heartbeat / 4)
        while not self._closed:
            await asyncio.sleep(interval)
            conn = self.conn
            if conn is None:
                continue
            try:
                conn.heartbeat_tick()
            except Exception as exc:
                if conn is self.conn:
                    self.lost(exc)

    # -- loss and recovery ---------------------------------------------------------------

    def lost(self, exc: BaseException) -> None:
        """Drop the connection after ``exc`` and start reconnecting (idempotent)."""
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        self.up_event.clear()
        self.writable.clear()
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
        self._fd = None
        self._wbuf.clear()
        self._sendall = _gone
        with contextlib.suppress(Exception):
            conn.collect()
        if not self._closed:
            log.warning("amqp connection to %s lost: %s: %s", self.address,
                        type(exc).__name__, exc)
        try:
            self._on_down(exc)
        finally:
            if not self._closed and (self._reconnecting is None or self._reconnecting.done()):
                assert self._loop is not None
                self._reconnecting = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        attempt = 0
        lost = self.broker
        while not self._closed:
            await asyncio.sleep(self.backoff.delay(attempt))
            attempt += 1
            try:   # the broker after the lost one first: with one broker, that one again
                conn, index = await asyncio.to_thread(self._new, lost + 1)
            except Exception as exc:
                log.info("reconnect failed (attempt %d): %s", attempt, exc)
                continue
            if self._closed:
                with contextlib.suppress(Exception):
                    conn.collect()
                return
            self.broker = index
            self._stats["reconnects"] = self._stats.get("reconnects", 0) + 1
            if index != lost:
                self._stats["failovers"] = self._stats.get("failovers", 0) + 1
            log.info("reconnected to %s after %d attempt(s)", self.address, attempt)
            self._attach(conn)
            if self.conn is not None:
                return

    # -- closing --------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection (the broker requeues unacked messages); idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in [*self._tasks, self._reconnecting]:
            if task is not None:
                task.cancel()
        conn, self.conn = self.conn, None
        self.up_event.clear()
        if conn is None:
            return
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
        self._fd = None

        self._direct += 1
        with contextlib.suppress(Exception):
            self._flush_now()
        self._sendall = _gone

        def shut() -> None:
            with contextlib.suppress(Exception):
                conn.sock.settimeout(2.0)
                conn.close()
            with contextlib.suppress(Exception):
                conn.collect()

        try:
            await asyncio.to_thread(shut)
        except RuntimeError:   # at interpreter exit the default executor is gone: close here
            shut()

