"""Confirmed publishing: casts, tasks, events, buried and re-counted tasks.

Every publish on the confirm channel gets the next delivery tag and a future that the
broker's ``basic.ack`` resolves (``basic.nack``: ConnectionError).  Every wait is bounded:

* the connection is lost (socket error, missed heartbeats, a channel or connection
  exception from the broker — py-amqp closes the connection for either): every pending
  confirm fails at once with ConnectionError;
* no confirm within ``confirm_timeout`` seconds (a broker that blocks publishers, a link
  that went silent before heartbeats notice): that send fails with ConnectionError.

Either way the message may or may not be on the broker; the outbox sends it again
(at-least-once: a duplicate is possible, a loss is not).  A late confirm for a tag that
gave up is ignored.  Each send waits on its own future, so one destination cannot hold
another's sends: the broker confirms every message, routed or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .link import Link

__all__ = ["Confirms"]


class Confirms:
    """The publisher-confirm window of one connection's confirm channel."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._next_tag = 1
        self._pending: dict[int, tuple[asyncio.Future[None], Callable[[], None] | None]] = {}

    def attach(self, ch: Any) -> None:
        """Put ``ch`` (the new connection's confirm channel) in confirm mode."""
        ch.confirm_select()
        ch.events["basic_ack"].add(self._on_ack)
        ch.events["basic_nack"].add(self._on_nack)
        self._next_tag = 1

    def __len__(self) -> int:
        return len(self._pending)

    async def publish(self, body: bytes, exchange: str, key: str,
                      then: Callable[[], None] | None = None, **props: Any) -> None:
        """Publish and wait for the broker's ack; ``then`` runs inside the ack's callback
        (before anything read after it is handled).  ConnectionError when no ack comes."""
        link = self._link
        await link.ready()
        assert link.loop is not None
        tag = self._next_tag
        self._next_tag += 1
        fut: asyncio.Future[None] = link.loop.create_future()
        self._pending[tag] = (fut, then)
        # call_later, not asyncio.timeout: a send may run outside a task (started eagerly)
        timer = link.loop.call_later(link.opts.confirm_timeout, self._expire, fut)
        try:
            link.guard(link.publish, link.ch_pub, body, exchange, key, **props)
            await fut
        finally:
            timer.cancel()
            entry = self._pending.get(tag)
            if entry is not None and entry[0] is fut:
                del self._pending[tag]
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()   # retrieved: a failure is reported by the raise above

    def _expire(self, fut: asyncio.Future[None]) -> None:
        if not fut.done():
            self._link.stats["confirm_timeouts"] += 1
            fut.set_exception(ConnectionError(f"amqp: no confirm from the broker within "
                                              f"{self._link.opts.confirm_timeout:g}s"))

    def fail_all(self, exc: BaseException) -> None:
        """The confirm channel is gone: every send waiting for a confirm fails with ``exc``."""
        pending, self._pending = self._pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, None)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._link.stats["nacked"] += 1
        self._settle(tag, multiple, ConnectionError("the broker refused the message (nack)"))

    def _settle(self, tag: int, multiple: bool, exc: BaseException | None) -> None:
        for t in [t for t in self._pending if t <= tag] if multiple else [tag]:
            entry = self._pending.pop(t, None)
            if entry is None or entry[0].done():
                continue
            fut, then = entry
            if exc is not None:
                fut.set_exception(exc)
                continue
            if then is not None:
                then()
            fut.set_result(None)
