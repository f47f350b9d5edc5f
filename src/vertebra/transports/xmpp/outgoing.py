"""The sending side: routing calls, casts and tasks to replicas, and every wait bounded.

There is no broker: until a replica acknowledges a cast or task (the IQ ``result``, sent
after its handler finished) only the sender has it.  So:

* ``send()`` of a cast or task transmits it to the least busy replica and waits for the
  acknowledgement, at most ``ack_wait`` seconds; the outbox behind it (and its spool) keeps
  the message until then.  An acknowledgement that does not come in time fails the send
  with ConnectionError while the message stays in flight here: the outbox's retry finds it
  by id and waits again, it is not sent twice.
* With no replica the message waits in a per-service list of this transport, at most
  ``grace`` seconds for one to appear, then the send fails with ConnectionError and the
  outbox owns it again (it retries with backoff until ``max_age``).  Nothing here waits on
  anything but its own message: an absent service never holds up another destination.
* A lost connection fails every waiting send at once (ConnectionError); the receiver's
  duplicate suppression makes the outbox's re-send harmless.
* A task the node hands on (the next attempt of one it is running, see
  :mod:`vertebra.wire.deadletter`) and a replayed dead letter have no outbox behind them:
  the transport owns them, re-sends them after a reconnect and re-routes them, until acked.
* A task whose replica vanished holding it ``max_redeliveries`` times is sent, with the
  ``dead-error`` header (``WorkerLost``), to a replica that buries it without running it.

Calls share the table: sent at once (``send`` returns), answered through ``on_answer``;
no replica: ``Unreachable`` at once unless the service was live a moment ago
(:meth:`Directory.recently_live`), then it waits ``grace`` seconds for one.  A streamed
call (the ``stream`` header) gets its ``item`` and ``beat`` envelopes in headline messages
from the replica it was sent to (:meth:`Outgoing.on_message`), each passed to
``on_answer`` with the call kept in flight; only the final IQ result or error ends it.
A streamed call moves to another replica like any call until its first item has come;
after that its replica going away (its presence, or the server bouncing the IQ) answers it
``unreachable`` (a new replica would start the stream again), and so does our own
connection dropping while it is out (items sent meanwhile are lost).

Forwarded messages (the gateway, :mod:`.gateway`) share it too: routed the same way, but
their answer (or this transport's own failure) goes to their :data:`.inflight.Sink`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import logging
import os
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from ...wire.codec import decode
from ...wire.deadletter import DEAD_ERROR_HEADER
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError, Unreachable, wire_error
from . import stanzas
from .inflight import REPLAY_HEADER, Out, Sink, delivery_key

if TYPE_CHECKING:
    from .transport import XmppTransport

__all__ = ["REPLAY_HEADER", "Out", "Outgoing", "delivery_key"]

log = logging.getLogger("vertebra.transports.xmpp")

_GONE = frozenset({"service-unavailable", "recipient-unavailable", "item-not-found",
                   "remote-server-not-found", "gone", "redirect"})


class Outgoing:
    """The in-flight table and the per-service waiting lists of one transport."""

    def __init__(self, t: XmppTransport) -> None:
        self.t = t
        self.out: dict[str, Out] = {}                    # delivery key -> in flight
        self.sids: dict[str, str] = {}                   # IQ id -> delivery key
        self.per_target: collections.Counter[str] = collections.Counter()
        self.waiting: dict[str, dict[str, None]] = collections.defaultdict(dict)
        self._acked: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lost: collections.OrderedDict[str, int] = collections.OrderedDict()  # across retries
        self._up: dict[str, list[asyncio.Future[None]]] = collections.defaultdict(list)
        self._sid_prefix = os.urandom(4).hex()
        self._sid_seq = itertools.count(1)

    # -- send -------------------------------------------------------------------------------

    async def send(self, env: Envelope) -> None:
        """Route one call, cast or task (see the module docstring for what it waits for)."""
        if env.kind == "call":
            env.reply_to = self.t.jid
            out = Out(env, self.t.encode(env), env.id)
            self.out[out.key] = out
            self._route(out, first=True)
            return
        key = delivery_key(env)
        if key in self._acked:          # a retry of something acknowledged meanwhile
            return
        handover = self.t.serving.is_running(env.id)
        found = self.out.get(key)
        if found is None:
            out = Out(env, self.t.encode(env), key, owned=handover, lost=self._lost.get(key, 0))
            if out.lost >= self.t.opts.max_redeliveries:
                self._to_be_buried(out, again=True)
            self.out[key] = out
            self._route(out)
        else:
            out = found
        if handover:
            if out.parked_at:      # nobody to hand it to: the original goes back instead
                self._settle(out, ConnectionError(f"no replica of {env.service!r} to hand "
                                                  f"task {env.id} to"))
                raise ConnectionError(f"no replica of {env.service!r} to hand task {env.id} to")
            out.owned = True
            return
        await self._wait(out)

    def hand_over(self, env: Envelope) -> Out:
        """Send ``env`` (a cast or task) with no outbox behind it: the transport keeps it."""
        out = Out(env, self.t.encode(env), delivery_key(env), owned=True)
        self.out[out.key] = out
        self._route(out)
        return out

    def forward(self, env: Envelope, data: bytes, key: str, sink: Sink) -> None:
        """Route ``env`` (already encoded as ``data``) for someone else: its answer goes to
        ``sink``.  A copy still in flight under ``key`` keeps going; the newest sink wins."""
        found = self.out.get(key)
        if found is not None:
            found.sink = sink
            return
        out = Out(env, data, key, sink=sink)
        self.out[key] = out
        self._route(out, first=True)

    def drop_forwarded(self, error: dict[str, Any]) -> None:
        """Give up every forwarded message now, telling each sink ``error``."""
        for out in [o for o in self.out.values() if o.sink is not None]:
            self._give_up(out, error)

    async def _wait(self, out: Out) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        out.waiters.append(fut)
        try:
            await asyncio.wait_for(fut, self.t.opts.ack_wait)
        except TimeoutError:
            # still in flight (a slow handler?): the outbox's retry finds it here by its key
            raise ConnectionError(
                f"{out.env.kind} {out.env.id}: no acknowledgement from "
                f"{out.target or 'a replica'} within {self.t.opts.ack_wait:g}s") from None
        except asyncio.CancelledError:
            if fut in out.waiters:
                out.waiters.remove(fut)
            if not out.waiters and not out.owned and self.out.get(out.key) is out:
                self._forget(out)        # the outbox gave it up (max_age) or is stopping
            raise
        finally:
            if fut in out.waiters:
                out.waiters.remove(fut)

    async def await_replica(self, service: str) -> None:
        """Return once ``service`` has a replica; Unreachable when none comes within grace."""
        if self.t.directory.has_replica(service):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._up[service].append(fut)
        try:
            await asyncio.wait_for(fut, self.t.opts.grace)
        except TimeoutError:
            raise Unreachable(f"no replica of service {service!r}") from None
        finally:
            if fut in self._up.get(service, ()):
                self._up[service].remove(fut)

    # -- routing ----------------------------------------------------------------------------

    def _route(self, out: Out, first: bool = False) -> None:
        """Send ``out`` to the best replica, or let it wait for one, or fail it."""
        env = out.env
        if out.items:                   # a stream begun cannot move: it would start again
            self._give_up(out, wire_error(
                "unreachable", "Unreachable", f"{out.target or 'the replica'} of "
                f"{env.service!r} went away after {out.items} item(s) of the stream"))
            return
        target = self.t.directory.choose(env.service, out.gone, self.per_target)
        if target:
            self._transmit(out, target)
            return
        if env.kind == "call" and first and not self.t.directory.recently_live(env.service):
            self._give_up(out, wire_error("unreachable", "Unreachable",
                                          f"no replica of service {env.service!r}"))
            return
        self._unassign(out)
        if not out.parked_at:
            out.parked_at = time.monotonic()
        self.waiting[env.service][out.key] = None

    def _transmit(self, out: Out, target: str) -> None:
        self._unassign(out)
        if out.parked_at:
            out.parked_at = 0.0
            self.waiting.get(out.env.service, {}).pop(out.key, None)
        out.sid = f"vt{self._sid_prefix}{next(self._sid_seq):x}"
        out.target = target
        out.transmissions += 1
        if out.transmissions > 1:
            self.t.stats["resent"] += 1
        self.sids[out.sid] = out.key
        self.per_target[target] += 1
        self.t.send_xml(stanzas.set_iq(target, out.sid, out.data))   # offline: resent later

    def _unassign(self, out: Out) -> None:
        if out.sid:
            self.sids.pop(out.sid, None)
            out.sid = ""
        if out.target:
            self.per_target[out.target] -= 1
            if self.per_target[out.target] <= 0:
                del self.per_target[out.target]
            out.target = ""

    def _forget(self, out: Out) -> None:
        self._unassign(out)
        if self.out.get(out.key) is out:
            del self.out[out.key]
        if out.parked_at:
            self.waiting.get(out.env.service, {}).pop(out.key, None)

    def _give_up(self, out: Out, error: dict[str, Any]) -> None:
        """This transport gave up on a call (or a forwarded message): say so."""
        self._forget(out)
        if out.sink is not None:
            out.sink(None, error)
        elif out.env.kind == "call":
            self.t.answer_now(out.env.fail(error))

    def _settle(self, out: Out, exc: BaseException | None = None) -> None:
        """Done with ``out``: acknowledged (``exc`` None) or failed; wake its waiters."""
        if exc is not None and out.sink is not None:
            self._give_up(out, wire_error("unreachable", type(exc).__name__, str(exc)))
            return
        self._forget(out)
        if exc is None and out.env.kind != "call":
            self._lost.pop(out.key, None)
            self._acked[out.key] = None
            if len(self._acked) > 20_000:
                self._acked.popitem(last=False)
        for w in out.waiters:
            if not w.done():
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(exc)
        out.waiters.clear()

    # -- what the directory tells us --------------------------------------------------------

    def replica_up(self, service: str) -> None:
        """A replica of ``service`` announced itself: what waits for one goes to it."""
        for fut in self._up.pop(service, ()):
            if not fut.done():
                fut.set_result(None)
        keys = self.waiting.pop(service, None)
        for key in keys or ():
            out = self.out.get(key)
            if out is not None and out.parked_at:
                out.gone.clear()
                self._route(out)

    def target_gone(self, jid: str) -> None:
        """A replica left: what it did not answer goes to another one."""
        for out in [o for o in self.out.values() if o.target == jid]:
            out.gone.add(jid)
            if out.env.kind != "call":
                out.lost += 1
                self._lost[out.key] = out.lost
                if len(self._lost) > 20_000:
                    self._lost.popitem(last=False)
                if out.lost >= self.t.opts.max_redeliveries:
                    self._to_be_buried(out)
            self._route(out)

    def _to_be_buried(self, out: Out, again: bool = False) -> None:
        """A poison task: its next replica buries it (``dead-error`` header) unrun."""
        if DEAD_ERROR_HEADER in out.env.headers:
            return
        err = wire_error("remote", "WorkerLost",
                         f"its worker vanished holding it {out.lost} time(s)")
        env = dataclasses.replace(out.env, headers={**out.env.headers,
                                                    DEAD_ERROR_HEADER: json.dumps(err)})
        out.env, out.data = env, self.t.encode(env)
        out.gone.clear()
        if again:               # the outbox's retry of one already given up
            return
        self.t.stats["worker_lost"] += 1
        log.warning("%s: %s %s.%s (%s) lost with %d replica(s): it goes to be buried",
                    self.t.jid, env.kind, env.service, env.method, env.id, out.lost)

    def rejoined(self) -> None:
        """Back in the directory room: what we still own goes out again."""
        for out in list(self.out.values()):
            if out.parked_at:
                continue
            if out.target and self.t.directory.present(out.target):
                self._transmit(out, out.target)
            else:
                self._route(out)

    def offline(self) -> None:
        """The connection is lost: every waiting send fails now (its outbox re-sends it),
        and so does every streamed call sent out (its items meanwhile are lost)."""
        for out in list(self.out.values()):
            if out.env.kind != "call" and not out.owned:
                self._settle(out, ConnectionError("xmpp connection lost before the "
                                                  "acknowledgement"))
            elif out.streamed and out.target:
                self._give_up(out, wire_error(
                    "unreachable", "Unreachable", "the connection to the XMPP server dropped "
                    f"during the stream from {out.target} (items may be lost)"))

    def close(self) -> int:
        """Fail every waiting send; return how many owned messages were never acknowledged."""
        owned = 0
        for out in list(self.out.values()):
            owned += out.owned
            self._settle(out, ConnectionError("xmpp transport closed"))
        for futs in self._up.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(ConnectionError("xmpp transport closed"))
        return owned

    def sweep(self) -> None:
        """Forget expired calls; end the waits for a replica that passed ``grace``."""
        now, mono, grace = time.time(), time.monotonic(), self.t.opts.grace
        for out in list(self.out.values()):
            env = out.env
            if env.kind == "call":
                if env.expired(now):
                    if out.sink is None:
                        self._forget(out)       # the caller's Bus has given up already
                    else:
                        self._give_up(out, wire_error("timeout", "CallTimeout",
                                                      f"no answer from {env.service!r} in time"))
                elif out.parked_at and mono - out.parked_at > grace:
                    self._give_up(out, wire_error("unreachable", "Unreachable",
                                                  f"no replica of {env.service!r} came back"))
            elif out.parked_at and mono - out.parked_at > grace and not out.owned:
                self._settle(out, ConnectionError(
                    f"no replica of service {env.service!r} within {grace:g}s"))

    # -- answers ----------------------------------------------------------------------------

    def on_answer(self, xml: ET.Element, kind: str) -> None:
        """An IQ ``result`` or ``error`` for something we sent."""
        key = self.sids.get(xml.get("id", ""), "")
        out = self.out.get(key)
        if out is None:
            return
        env = out.env
        try:
            data = stanzas.env_of(xml)
        except ValueError:
            data = None
        if kind == "result":
            self._settle(out)
            if out.sink is not None:
                out.sink(xml, None)
            elif env.kind == "call" and data is not None:
                self._deliver(env, data)
            return
        condition = stanzas.error_condition(xml)
        gone = condition in _GONE and data is None       # that replica cannot take it
        requeued = condition == "resource-constraint" and env.kind != "call"
        if gone or requeued:                             # ... so another one may
            out.gone.add(out.target)
            self._route(out)
        elif out.sink is not None:                       # the replica's answer: pass it on
            self._forget(out)
            out.sink(xml, None)
        elif env.kind == "call":
            self._settle(out)
            if data is not None:
                self._deliver(env, data)
            else:
                code = "unreachable" if condition == "forbidden" else "protocol"
                self.t.answer_now(env.fail(wire_error(code, condition or "error",
                                                      f"XMPP error: {condition}")))
        else:
            why = f"{condition}: {stanzas.error_text(xml)}".rstrip(": ")
            log.warning("%s: %s %s.%s (%s) refused by %s: %s", self.t.jid, env.kind,
                        env.service, env.method, env.id, out.target, why)
            self._settle(out, ProtocolError(f"{env.kind} {env.id} refused: {why}"))

    def on_message(self, xml: ET.Element) -> None:
        """A headline message with an ``item`` or ``beat`` of one of our streamed calls;
        ignored unless it comes from the replica the call is with (late, stray)."""
        try:
            data = stanzas.env_of(xml)
            env = decode(data or b"")
        except (ValueError, ProtocolError) as exc:
            self.t.stats["malformed"] += 1
            log.warning("%s: malformed stream message from %s: %s", self.t.jid,
                        xml.get("from", ""), exc)
            return
        if env.kind != "item" and env.kind != "beat":
            self.t.stats["malformed"] += 1
            return
        out = self.out.get(env.re)
        if out is None or out.env.kind != "call" or out.sink is not None \
                or not stanzas.same_jid(xml.get("from", ""), out.target):
            return
        if env.kind == "item":
            out.items += 1
        self.t.answer_now(env)

    def _deliver(self, call: Envelope, data: bytes) -> None:
        try:
            env = decode(data)
        except ProtocolError as exc:
            self.t.stats["malformed"] += 1
            log.warning("%s: malformed answer: %s", self.t.jid, exc)
            self.t.answer_now(call.fail(wire_error("protocol", "ProtocolError",
                                                   f"malformed answer: {exc}")))
            return
        if env.kind in ("reply", "error"):
            env.re = env.re or call.id
            self.t.answer_now(env)
