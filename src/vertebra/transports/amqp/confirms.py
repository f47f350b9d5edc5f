"""Confirmed publishing: casts, tasks, events, buried and re-counted tasks.

Every publish on the confirm channel gets the next delivery tag and a future that the
broker's ``basic.ack`` resolves (``basic.nack``: ConnectionError).  Every wait is bounded:

* the connection is lost (socket error, missed heartbeats, a channel or connection
  exception from the broker — py-amqp closes the connection for either): every pending
  confirm fails at once with ConnectionError;
* no confirm within ``confirm_timeout`` seconds (a broker that blocks publishers, a link
  that went silent before heartbeats notice): that send fails with ConnectionError.
  One timer fails the overdue ones, oldest first (:class:`~vertebra.expiries.Expiries`),
  instead of a timer per publish.

Either way the message may or may not be on the broker; the outbox sends it again
(at-least-once: a duplicate is possible, a loss is not).  A late confirm for a tag that
gave up is ignored.  Each send waits on its own future, so one destination cannot hold
another's sends: the broker confirms every message, routed or not.

A nack replaces the confirm channel.  RabbitMQ 3.10 has a trap on quorum queues (verified
on a 3-node cluster here): a channel whose *first* publish to a quorum queue comes while
that queue is electing a new leader (its leader's node just died) gets a nack for that
publish and for every later one to that queue, for as long as the channel lives, while a
channel opened afterwards is acked at once.  A bus that fails over to another node
re-opens its channels within that window.  So after a nack the next publishes go to a new
channel (the outbox sends the refused one again); the old channel is closed once the
confirms it still owes have come or timed out.

A ``mandatory`` publish (a delayed message, :mod:`.delays`) that the broker cannot route
is returned (``basic.return``, which comes before its ``basic.ack``): that send fails with
ConnectionError, keyed by the message's ``message_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from ...expiries import Expiries
from .link import Link

__all__ = ["Confirms"]

_Pending = dict[int, tuple[asyncio.Future[None], Callable[[], None] | None]]
"""delivery tag -> (the send's future, what runs on its ack)."""


class _Window:
    """One confirm channel: its next delivery tag and the sends waiting for its confirms."""

    __slots__ = ("ch", "next_tag", "pending", "returned")

    def __init__(self, ch: Any) -> None:
        self.ch = ch
        self.next_tag = 1
        self.pending: _Pending = {}
        self.returned: dict[str, str] = {}   # message_id -> why, of mandatory publishes returned


def _unless_returned(win: _Window, message_id: str, then: Callable[[], None]) -> Callable[[], None]:
    """``then``, skipped when the message was returned (its return precedes its ack)."""
    def run() -> None:
        if message_id not in win.returned:
            then()
    return run


class Confirms:
    """The publisher-confirm window of one connection's confirm channel."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._win: _Window | None = None
        self._retired: list[_Window] = []
        self._renewing = False
        self._expiries = Expiries(link.opts.confirm_timeout, self._timed_out)

    def attach(self, ch: Any) -> None:
        """Put ``ch`` (the new connection's confirm channel) in confirm mode."""
        self._retired.clear()          # they died with the old connection
        self._renewing = False
        self._win = self._open(ch)

    def _open(self, ch: Any) -> _Window:
        ch.confirm_select()
        win = _Window(ch)
        ch.events["basic_ack"].add(lambda tag, multiple: self._settle(win, tag, multiple, None))
        ch.events["basic_nack"].add(lambda tag, multiple: self._on_nack(win, tag, multiple))
        ch.events["basic_return"].add(lambda exc, exchange, key, msg: self._on_return(
            win, exc, key, msg))
        return win

    @staticmethod
    def _on_return(win: _Window, exc: Any, key: str, msg: Any) -> None:
        message_id = getattr(msg, "properties", {}).get("message_id")
        if message_id and len(win.returned) < 4096:
            win.returned[str(message_id)] = (f"the broker could not route it ({key!r}: "
                                             f"{getattr(exc, 'reply_text', exc)})")

    def __len__(self) -> int:
        return sum(len(w.pending) for w in (self._win, *self._retired) if w is not None)

    async def publish(self, body: bytes, exchange: str, key: str,
                      then: Callable[[], None] | None = None, **props: Any) -> None:
        """Publish and wait for the broker's ack; ``then`` runs inside the ack's callback
        (before anything read after it is handled).  ConnectionError when no ack comes."""
        link = self._link
        await link.ready()
        win = self._win
        if win is None:
            raise ConnectionError("amqp: no confirm channel (reconnecting)")
        assert link.loop is not None
        message_id = str(props.get("message_id", "")) if props.get("mandatory") else ""
        if then is not None and message_id:
            then = _unless_returned(win, message_id, then)
        tag = win.next_tag
        win.next_tag += 1
        fut: asyncio.Future[None] = link.loop.create_future()
        win.pending[tag] = (fut, then)
        self._expiries.add(fut)
        try:
            link.guard(link.publish, win.ch, body, exchange, key, **props)
            await fut
            why = win.returned.pop(message_id, None) if message_id else None
            if why is not None:
                raise ConnectionError(f"amqp: message {message_id} returned: {why}")
        finally:
            if message_id:
                win.returned.pop(message_id, None)
            entry = win.pending.get(tag)
            if entry is not None and entry[0] is fut:
                del win.pending[tag]
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()   # retrieved: a failure is reported by the raise above
            if win is not self._win and not win.pending:
                link.loop.call_soon(self._close_retired)

    def _timed_out(self) -> ConnectionError:
        """The error of a send whose confirm did not come in time (counted)."""
        self._link.stats["confirm_timeouts"] += 1
        return ConnectionError(f"amqp: no confirm from the broker within "
                               f"{self._link.opts.confirm_timeout:g}s")

    def fail_all(self, exc: BaseException) -> None:
        """The confirm channel is gone: every send waiting for a confirm fails with ``exc``."""
        windows = [w for w in (self._win, *self._retired) if w is not None]
        self._win, self._retired = None, []
        for win in windows:
            pending, win.pending = win.pending, {}
            for fut, _ in pending.values():
                if not fut.done():
                    fut.set_exception(exc)

    def _on_nack(self, win: _Window, tag: int, multiple: bool) -> None:
        self._link.stats["nacked"] += 1
        self._settle(win, tag, multiple, ConnectionError("the broker refused the message (nack)"))
        if win is self._win and not self._renewing:
            self._renewing = True                 # a channel is opened outside py-amqp's
            self._link.inbox.append(self._renew)   # callback, once this read is done

    def _renew(self) -> None:
        """Publish on a new channel from now on (see the module docstring: nack trap)."""
        self._renewing = False
        link, old = self._link, self._win
        if old is None or link.conn.conn is None:
            return
        try:
            ch = link.sync(link.conn.conn.channel)
            win = link.sync(self._open, ch)
        except ConnectionError:
            return                                 # the connection is going: attach() follows
        self._win = win
        link.ch_pub = ch
        link.stats["channels_renewed"] = link.stats.get("channels_renewed", 0) + 1
        self._retired.append(old)
        self._close_retired()

    def _close_retired(self) -> None:
        """Close every retired channel that owes no confirm any more."""
        keep: list[_Window] = []
        for win in self._retired:
            if win.pending:
                keep.append(win)
                continue
            with contextlib.suppress(Exception), self._link.conn.direct():
                win.ch.close()
        self._retired = keep

    def _settle(self, win: _Window, tag: int, multiple: bool, exc: BaseException | None) -> None:
        pending = win.pending
        tags = [tag]
        if multiple:   # pending is in tag order: stop at the first tag above this one
            tags = []
            for t in pending:
                if t > tag:
                    break
                tags.append(t)
        for t in tags:
            entry = pending.pop(t, None)
            if entry is None or entry[0].done():
                continue
            fut, then = entry
            if exc is not None:
                fut.set_exception(exc)
                continue
            if then is not None:
                then()
            fut.set_result(None)
