"""The hub's protocol: what it does with each command (docs/protocol/zmq.md).

:class:`HubState` is the hub without its sockets, built on the credit and queues of
:class:`~.routing.Router`: :meth:`HubState.on_command` takes one parsed ROUTER message.

* CAST / TASK are confirmed with QUEUED once held, and taken once: a re-send of the same
  message (:class:`~.graveyard.RecentSends`) is confirmed again, not queued twice.  Their
  priority frame (absent: 0) orders the service's queue; the envelope is never decoded.
* A streamed call is answered by any number of ITEM frames (``item`` / ``beat``
  envelopes), forwarded to the caller as ANSWER like a REPLY, but settling nothing: the
  delivery stays in flight (credit spent, its caller on record) until the final REPLY.
* A peer silent for its ``heartbeat × liveness`` is dropped: its services leave routing,
  its unsettled casts and tasks go back to the front of their queues, the callers of its
  calls get UNREACHABLE.  A cast or task whose worker died holding it more than
  ``max_redeliveries`` times is buried instead (``WorkerLost``): a poison message.
* Attempts are the node's: NACK with requeue puts a delivery back unchanged; BURY (or
  NACK ``0`` of a task) keeps it as a dead letter, listed by DEAD and sent back by REPLAY.
* A hub that a returning bus tells it replaced another (HELLO ``hub``) holds calls to
  services nobody serves yet for ``grace`` seconds from its start (their replicas are on
  their way back), instead of answering UNREACHABLE at once.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ...wire.codec import codec_of
from ...wire.envelope import Envelope
from ...wire.errors import wire_error
from . import frames as F
from .graveyard import Graveyard, RecentSends
from .routing import Item, Peer, Router, Send

__all__ = ["HubState"]

log = logging.getLogger("vertebra.transports.zmq.hub")


class HubState(Router):
    """Everything the hub knows, and what it does with each command (see the module doc)."""

    def __init__(self, send: Send, *, heartbeat: float, liveness: int, max_message_size: int,
                 max_queue: int, max_redeliveries: int, max_dead_letters: int,
                 dedup_window: int, grace: float, now: float) -> None:
        super().__init__(send, max_queue)
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.max_message_size = max_message_size
        self.max_redeliveries = max_redeliveries
        self.grace = grace
        self.id = os.urandom(8).hex()
        """This hub's identity, told in WELCOME: a new one at every start."""
        self.started = self.now = now
        self.resumed = False
        """A bus told us that it talked to another hub before (we replaced one)."""
        self.graveyard = Graveyard(max_dead_letters)
        self.recent = RecentSends(dedup_window)
        self.stats.update({"events": 0, "expired_peers": 0, "duplicates": 0, "buried": 0,
                           "dead_letters_dropped": 0, "worker_lost": 0, "replayed": 0})
        self.endpoints: dict[str, str] = {}
        self.allow: list[str] | None = None
        """The CURVE client keys (Z85) of the hub's allow-list, told in WELCOME so that a
        node's direct endpoint admits the same callers as the hub (None: no allow-list)."""
        self._grace_over = False

    def bad(self, ident: bytes, reason: str, msgid: bytes = b"") -> None:
        """Count a malformed message and tell its sender (PROTOCOL)."""
        self.stats["malformed"] += 1
        log.warning("hub: bad message from %s: %s", ident.hex(), reason)
        self.send(ident, [F.header(F.PROTOCOL), msgid, reason.encode()[:500]])

    def refuse_call(self, caller: bytes, msgid: bytes, body: bytes, reason: str) -> None:
        """Answer a call the hub or its node refused (PROTOCOL.md §5) with an ``error``
        envelope of code "protocol", ``re`` = the CALL's message-id frame, in the call's codec
        (the hub reads only the first byte of the envelope to tell the codec)."""
        answer = Envelope("error", re=msgid.decode("utf-8", "replace"),
                          error=wire_error("protocol", "ProtocolError", reason))
        codec = codec_of(body)
        self.send(caller, [F.header(F.ANSWER), codec.encode(answer)])

    def on_command(self, ident: bytes, cmd: int, args: list[bytes]) -> None:
        """Handle one ROUTER message (already parsed) from ``ident``."""
        peer = self.peers.get(ident)
        if peer is None:
            if cmd == F.HELLO:
                self.hello(ident, args[0])
                return
            if cmd == F.BYE:
                return
            # a peer we do not know (we restarted, or dropped it): serve it, ask it to HELLO
            peer = self.peers[ident] = Peer(ident, self.heartbeat, self.liveness, self.now)
            self.send(ident, [F.header(F.RESET)])
        peer.last_seen = self.now
        if F.CALL <= cmd <= F.TASK:
            self.take(ident, cmd, args)
        elif cmd == F.ITEM:
            self._item(peer, *args)
        elif cmd == F.REPLY:
            tag, body = args
            entry = peer.inflight.pop(tag, None)
            if entry is None:
                self.stats["dropped"] += 1
                return
            self.send(entry[1][1], [F.header(F.ANSWER), body])
            self._release(peer, entry[0])
        elif cmd == F.ACK:
            entry = peer.inflight.pop(args[0], None)
            if entry is not None:
                self._release(peer, entry[0])
        elif cmd in (F.NACK, F.BURY):
            entry = peer.inflight.pop(args[0], None)
            if entry is not None:
                self._give_up(entry[0], entry[1], cmd, args[1])  # back at the front first,
                self._release(peer, entry[0])                    # then the credit pumps it out
        elif cmd == F.SERVE:
            self._serve(peer, *args)
        elif cmd == F.UNSERVE:
            self._unserve(peer, args[0])
        elif cmd == F.DISCOVER:
            self.send(ident, [F.header(F.SERVICES), args[0], self._directory()])
        elif cmd == F.ROUTES:
            self.send(ident, [F.header(F.REPLICAS), args[0], self._replicas(args[1])])
        elif cmd == F.DEAD:
            self._list_dead(ident, *args)
        elif cmd == F.REPLAY:
            self._replay(ident, *args)
        elif cmd == F.BYE:
            self.drop_peer(peer, "the replica closed", died=False)
        elif cmd == F.HELLO:
            self.hello(ident, args[0])

    def hello(self, ident: bytes, body: bytes) -> None:
        """HELLO: (re)register ``ident`` and answer WELCOME.  A peer we know keeps its
        state (services, deliveries): it said HELLO again because it lost sight of us."""
        try:
            opts = json.loads(body) if body else {}
            if not isinstance(opts, dict):
                raise ValueError("HELLO carries a JSON object")
            interval = float(opts.get("heartbeat", self.heartbeat))
            liveness = int(opts.get("liveness", self.liveness))
            if not (0.01 <= interval <= 3600 and 1 <= liveness <= 1000):
                raise ValueError("heartbeat or liveness out of range")
        except (ValueError, TypeError) as exc:
            self.bad(ident, f"bad HELLO: {exc}")
            return
        before = opts.get("hub")
        if isinstance(before, str) and before and before != self.id and not self.resumed:
            self.resumed = True
            log.info("hub: buses are coming back from hub %s; calls wait up to %.1fs for "
                     "their services", before, self.grace)
        peer = self.peers.get(ident)
        if peer is None:
            peer = self.peers[ident] = Peer(ident, interval, liveness, self.now)
        peer.interval, peer.liveness, peer.last_seen, peer.last_sent = interval, liveness, self.now, self.now
        welcome = {"v": F.VERSION, "id": self.id, **self.endpoints, "heartbeat": interval,
                   "liveness": liveness, "max_message_size": self.max_message_size}
        if self.allow is not None:
            welcome["allow"] = self.allow
        self.send(ident, [F.header(F.WELCOME), json.dumps(welcome).encode()])

    def take(self, ident: bytes, cmd: int, args: list[bytes]) -> None:
        """CALL / CAST / TASK from ``ident`` (its frames: service, message id, the priority
        frame if any, envelope): check, deduplicate, route."""
        service, msgid, body = args[0], args[1], args[-1]
        try:
            priority = F.priority_of(args[2]) if len(args) == 4 else 0
        except F.FrameError as exc:
            self.bad(ident, str(exc), msgid)
            return
        if len(body) > self.max_message_size:
            self.stats["oversized"] += 1
            reason = f"message of {len(body)} bytes is over the hub's maximum of {self.max_message_size}"
            if cmd == F.CALL:
                self.stats["malformed"] += 1
                log.warning("hub: refused a call from %s: %s", ident.hex(), reason)
                self.refuse_call(ident, msgid, body, reason)
            else:
                self.bad(ident, reason, msgid)
            return
        if cmd == F.CALL:
            self._route(service, (cmd, ident, msgid, body, 0, priority))
            return
        if self.recent.seen(service, msgid, body):
            self.stats["duplicates"] += 1
            self.send(ident, [F.header(F.QUEUED), msgid])
            return
        if self._route(service, (cmd, ident, msgid, body, 0, priority), confirm=True):
            self.recent.add(service, msgid, body)

    def _item(self, peer: Peer, tag: bytes, body: bytes) -> None:
        """ITEM: one ``item`` or ``beat`` of the streamed call delivered as ``tag``, to its
        caller as ANSWER; the delivery stays in flight (only its REPLY settles it)."""
        entry = peer.inflight.get(tag)
        if entry is None:          # settled already, or the hub dropped the caller's call
            self.stats["dropped"] += 1
            return
        item = entry[1]
        if item[0] != F.CALL:
            self.bad(peer.ident, f"ITEM for a {F.DELIVER_KINDS[item[0]]}: only a call is answered")
            return
        if len(body) > self.max_message_size:
            self.stats["oversized"] += 1
            self.bad(peer.ident, f"item of {len(body)} bytes is over the hub's maximum of "
                     f"{self.max_message_size}", item[2])
            return
        self.send(item[1], [F.header(F.ANSWER), body])

    def tick(self, now: float) -> None:
        """Liveness: drop silent peers, heartbeat the others; end the restart grace."""
        self.now = now
        for peer in list(self.peers.values()):
            if now - peer.last_seen > peer.interval * peer.liveness:
                self.stats["expired_peers"] += 1
                log.info("hub: peer %s missed its heartbeats; dropped", peer.ident.hex())
                self.drop_peer(peer, "the replica stopped answering heartbeats")
            elif now - peer.last_sent >= peer.interval:
                peer.last_sent = now
                self.send(peer.ident, [F.header(F.HEARTBEAT)])
        if not self._grace_over and now - self.started > self.grace:
            self._grace_over = True
            for svc in list(self.services.values()):
                if not svc.workers:
                    self._fail_queued_calls(svc)
                    if not svc.queue:
                        del self.services[svc.name]

    def in_grace(self) -> bool:
        """Calls to services nobody serves wait (we replaced a hub a moment ago)."""
        return self.resumed and not self._grace_over

    def _give_up(self, name: bytes, item: Item, cmd: int, how: bytes) -> None:
        """NACK (``how``: requeue / give up / undecodable) or BURY (``how``: the error)."""
        kind, caller, msgid = item[0], item[1], item[2]
        if cmd == F.NACK and how == b"1":
            if kind == F.CALL:       # e.g. the replica was leaving: try another one
                self._route(name, item)
            else:                    # unchanged, not an attempt: attempts are the node's
                self._requeue(name, item)
        elif cmd == F.NACK and how == b"p":
            self.stats["malformed"] += 1
            if kind == F.CALL:
                self.refuse_call(caller, msgid, item[3], "the node could not decode the call: not "
                                 "an envelope, or one that breaks a rule of PROTOCOL.md §2")
            else:
                self.stats["dropped"] += 1
                log.info("hub: dropped an undecodable %s for %s", F.DELIVER_KINDS[kind],
                         name.decode(errors="replace"))
        elif kind == F.CALL:
            self.send(caller, [F.header(F.UNREACHABLE), msgid, b"rejected by the node"])
        elif cmd == F.BURY:
            try:
                error = json.loads(how)
                if not isinstance(error, dict):
                    raise ValueError("not an object")
            except ValueError:
                error = wire_error("remote", "Error", "buried by the node (unreadable error)")
            self.bury(name, item, error)
        elif kind == F.TASK:
            self.bury(name, item, wire_error("remote", "Rejected", "rejected by the node"))
        else:
            self.stats["dropped"] += 1
            log.info("hub: a cast for %s was given up by its node; dropped", name.decode(errors="replace"))

    def bury(self, name: bytes, item: Item, error: dict[str, Any]) -> None:
        """Keep ``item`` as a dead letter of ``name`` with ``error``."""
        self.stats["buried"] += 1
        self.recent.forget(name, item[2])
        self.graveyard.bury(name, item[2], item[3], error)
        self.stats["dead_letters_dropped"] = self.graveyard.dropped
        log.info("hub: buried %s for %s (%s)", item[2].decode(errors="replace"),
                 name.decode(errors="replace"), error.get("type"))

    def drop_peer(self, peer: Peer, reason: str, died: bool = True) -> None:
        """Forget ``peer``: its services leave routing, its work goes back (counted as a
        death of its worker unless it left cleanly: not ``died``) or is answered."""
        if self.peers.get(peer.ident) is not peer:
            return
        del self.peers[peer.ident]
        for name in list(peer.serving):
            self._unserve(peer, name)
        touched: set[bytes] = set()
        for name, item in reversed(list(peer.inflight.values())):
            if item[0] == F.CALL:
                if item[1] != peer.ident:
                    self.send(item[1], [F.header(F.UNREACHABLE), item[2], reason.encode()])
                continue
            deaths = item[4] + (1 if died else 0)
            if deaths <= self.max_redeliveries:
                self._requeue(name, (item[0], item[1], item[2], item[3], deaths, item[5]))
                touched.add(name)
                continue
            self.stats["worker_lost"] += 1   # a poison message: it kills its workers
            log.warning("hub: the worker of %s for %s died holding it %d times; buried",
                        item[2].decode(errors="replace"), name.decode(errors="replace"), deaths)
            self.bury(name, item, {**wire_error(
                "remote", "WorkerLost", f"its worker died holding it {deaths} times"),
                "deliveries": deaths})
        peer.inflight.clear()
        for name in touched:
            self._pump(self.services[name])

    def _list_dead(self, ident: bytes, reqid: bytes, service: bytes, cursor: bytes) -> None:
        after = int(cursor) if cursor.isdigit() else 0
        head, letters = self.graveyard.page(service, after, self.max_message_size)
        frames = [F.header(F.DEAD_LETTERS), reqid, json.dumps(head).encode()]
        for entry in letters:
            frames += [entry.msgid, entry.error, entry.body]
        self.send(ident, frames)

    def _replay(self, ident: bytes, reqid: bytes, service: bytes, msgid: bytes,
                *rest: bytes) -> None:
        body = rest[-1]
        try:
            priority = F.priority_of(rest[0]) if len(rest) == 2 else 0
        except F.FrameError as exc:
            self.bad(ident, f"bad REPLAY: {exc}")
            self.send(ident, [F.header(F.REPLAYED), reqid, b"0"])
            return
        if len(body) > self.max_message_size:
            self.stats["oversized"] += 1
            self.bad(ident, f"replayed message of {len(body)} bytes is over the hub's maximum", msgid)
            return
        svc = self.services.get(service)
        full = svc is not None and not svc.available and len(svc.queue) >= self.max_queue
        if full or self.graveyard.take(service, msgid) is None:
            self.send(ident, [F.header(F.REPLAYED), reqid, b"0"])
            return
        self.recent.forget(service, msgid)
        self.stats["replayed"] += 1
        self._route(service, (F.TASK, ident, msgid, body, 0, priority))
        self.send(ident, [F.header(F.REPLAYED), reqid, b"1"])
