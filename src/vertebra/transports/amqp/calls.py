"""Calls out and answers in: mandatory publishes to a service's call queue, replies over
direct reply-to, and what becomes of a call the broker cannot route.

* A call nobody serves comes back (``basic.return``: the call queue exists exactly while a
  replica consumes it) and is answered ``unreachable`` at once — except during ``settle``
  seconds after a *re*connect: a broker restart drops every call queue, and the replicas
  re-declare theirs only once they have reconnected too, so a returned call is held and
  sent again with backoff (while its deadline allows) instead of failing for a replica
  that is coming back.
* A call that comes back unrouted for a service that answered this bus within the last
  ``settle`` seconds is held the same way, for at most ``_GRACE`` (1 s) from its first
  return.  On a cluster a call queue lives on one node; when that node dies the queue goes
  with it while its replicas on other nodes are still up (they are told, ``basic.cancel``,
  and declare it again within milliseconds, :mod:`.serving`), so a call in that gap would
  fail although a replica serves.  A service that really stopped is still reported
  ``unreachable`` — one second later for a caller it had just answered.
* A streamed call is answered by any number of ``item`` and ``beat`` envelopes, then one
  final ``reply`` or ``error``, all over direct reply-to (which keeps their order: one
  publisher channel to one consumer); each goes to ``on_answer`` as it comes, and the call
  is forgotten only on the final one.
* While the connection is down ``send`` raises a plain ConnectionError (the Bus retries
  until the call's deadline).  A call already published when the connection drops cannot
  get its reply (direct reply-to lives on the old channel) and may or may not have run:
  it is answered ``unreachable`` at once rather than run twice.  A held call is not on the
  wire and waits for the next connection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ...backoff import Backoff
from ...wire.codec import decode
from ...wire.envelope import ANSWERS, Envelope
from ...wire.errors import ProtocolError, wire_error
from ..base import AnswerCallback
from .discovery import DISCOVER_TYPE, parse_answer
from .link import Link, body_of
from .topology import REPLY_TO

__all__ = ["Calls"]

_PRUNE_AT = 1024
_GRACE = 1.0   # seconds a returned call to a service that answered lately is held


@dataclass(slots=True)
class _Call:
    id: str
    service: str
    body: bytes
    deadline: float | None   # epoch seconds; also the message's TTL
    held: bool = False
    holds: int = 0
    returned_at: float = 0.0   # monotonic time of its first return; 0: never returned

    def expired(self, after: float = 0.0) -> bool:
        limit = self.deadline if self.deadline is not None else float("inf")
        return time.time() + after >= limit


class Calls:
    """The calls this transport has out, and the reply consumer that answers them."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._out: dict[str, _Call] = {}
        self._backoff = Backoff(base=0.05, cap=1.0)
        self.on_answer: AnswerCallback = lambda env: None
        self.discovery: dict[str, list[dict[str, Any]]] = {}
        """Discovery answers being collected, by request correlation id."""
        self._answered: dict[str, float] = {}   # service -> when it last answered (monotonic)

    def attach(self, ch: Any) -> None:
        """Consume replies and returns on ``ch``, the new connection's call channel."""
        ch.events["basic_return"].add(self._on_return)
        ch.basic_consume(REPLY_TO, no_ack=True, callback=self._on_reply)

    async def send(self, env: Envelope) -> None:
        """Publish the call ``env`` (mandatory, TTL = what is left of its deadline)."""
        await self._link.ready()
        env.reply_to = REPLY_TO
        call = _Call(env.id, env.service, self._link.encode(env), env.deadline)
        self._out[env.id] = call
        try:
            self._publish(call)
        except ConnectionError:
            self._out.pop(env.id, None)
            raise
        self._prune()

    def _publish(self, call: _Call) -> None:
        link = self._link
        props: dict[str, Any] = {"correlation_id": call.id, "reply_to": REPLY_TO,
                                 "delivery_mode": 1, "message_id": call.id}
        if call.deadline is not None:
            props["expiration"] = str(max(int((call.deadline - time.time()) * 1000), 1))
        link.guard(link.publish, link.ch_call, call.body, "", link.topology.call_queue(call.service),
                   mandatory=True, **props)

    def _prune(self) -> None:
        if len(self._out) < _PRUNE_AT:
            return
        for call_id in [c.id for c in self._out.values() if c.expired() and not c.held]:
            del self._out[call_id]

    # -- a call the broker could not route ------------------------------------------------

    def _settling(self) -> bool:
        link = self._link
        return link.generation > 1 and time.monotonic() - link.up_since < link.opts.settle

    def _on_return(self, exc: Any, exchange: str, routing_key: str, msg: Any) -> None:
        self._link.stats["returned"] += 1
        corr = msg.properties.get("correlation_id")
        try:
            env = decode(body_of(msg))
        except ProtocolError:
            if not corr:
                return
            env = Envelope("call", id=str(corr))
        if env.kind != "call":
            return
        why = (f"no replica serves {env.service!r} "
               f"(queue {routing_key!r}: {getattr(exc, 'reply_text', exc)})")
        call = self._out.get(env.id)
        if call is not None and (self._settling() or self._grace(call)):
            self._hold(call, why)
        else:
            self._out.pop(env.id, None)
            self._unreachable(env.id, why)

    def _grace(self, call: _Call) -> bool:
        """Whether ``call``'s service answered lately and its return is still fresh."""
        now = time.monotonic()
        if not call.returned_at:
            call.returned_at = now
        answered = self._answered.get(call.service)
        return (answered is not None and now - answered < self._link.opts.settle
                and now - call.returned_at < _GRACE)

    def _hold(self, call: _Call, why: str) -> None:
        """Send ``call`` again after a backoff delay, or answer it ``unreachable`` when
        that would pass its deadline."""
        delay = self._backoff.delay(call.holds)
        if call.expired(after=delay) or self._link.closed:
            self._out.pop(call.id, None)
            self._unreachable(call.id, why)
            return
        call.held = True
        call.holds += 1
        self._link.stats["held"] += 1
        assert self._link.loop is not None
        self._link.loop.call_later(delay, self._resend, call.id, why)

    def _resend(self, call_id: str, why: str) -> None:
        call = self._out.get(call_id)
        if call is None or not call.held:
            return
        if not self._link.conn.up:
            self._hold(call, f"{why}; the connection to the broker is down")
            return
        call.held = False
        try:
            self._publish(call)
        except ConnectionError as exc:
            self._hold(call, f"{why}; {exc}")

    # -- answers ----------------------------------------------------------------------------

    def _on_reply(self, msg: Any) -> None:
        props = msg.properties
        corr = props.get("correlation_id")
        if props.get("type") == DISCOVER_TYPE:
            bucket = self.discovery.get(str(corr))
            if bucket is not None:
                try:
                    bucket.extend(parse_answer(body_of(msg)))
                except ProtocolError as exc:
                    self._link.malformed(f"discovery answer: {exc}")
            return
        try:
            env = decode(body_of(msg))
        except ProtocolError as exc:
            self._link.malformed(f"reply: {exc}")
            return
        if env.kind not in ANSWERS:
            self._link.malformed(f"a {env.kind} envelope arrived as a reply")
            return
        final = env.kind == "reply" or env.kind == "error"
        call = self._out.pop(env.re, None) if final else self._out.get(env.re)
        if call is not None:
            if len(self._answered) >= _PRUNE_AT:
                self._answered.clear()
            self._answered[call.service] = time.monotonic()
        self.on_answer(env)

    def _unreachable(self, call_id: str, message: str) -> None:
        self.on_answer(Envelope("call", id=call_id).fail(
            wire_error("unreachable", "Unreachable", message)))

    def lost(self, message: str) -> None:
        """The connection dropped: calls on the wire cannot be answered any more."""
        for call in [c for c in self._out.values() if not c.held]:
            del self._out[call.id]
            self._unreachable(call.id, message)

    def fail_all(self, message: str) -> None:
        """The transport closes: answer every call still out."""
        calls, self._out = self._out, {}
        for call_id in calls:
            self._unreachable(call_id, message)
