"""xmpp:// — vertebra over XMPP (slixmpp), tested against a private Prosody.

Capability sheet
----------------
* Addressing: every bus is one client session ``user@domain/resource``.  Services are
  found through a directory room (XEP-0045 MUC, ``?room=`` on ``?muc=``): each bus joins
  it with a presence that carries a ``<node xmlns='urn:vertebra:presence:1'/>`` listing the
  services it serves, its full JID and its load.  A service's replicas are the occupants
  announcing it; a replica whose presence goes unavailable stops getting work at once.
* Calls: ``<iq type='set'>`` with the encoded envelope to one replica (least busy first,
  round robin among equals); the ``result`` IQ carries the reply, an ``error`` IQ carries
  the error envelope with an XMPP condition.  A call to a service with no replica fails at
  once with Unreachable.  Calls in flight to a replica that vanishes are re-sent to another
  one, or held ``?grace=`` seconds (default 3) for it to come back, then Unreachable.
* Casts and tasks: the same IQ; the ``result`` IQ is the acknowledgement, sent after the
  handler finished.  Until it arrives the sender keeps the task in an in-flight table and
  re-sends it to another replica if its replica goes away (at-least-once); receivers
  suppress duplicates by envelope id.  Rejected (requeued) tasks are retried up to
  ``?max_attempts=`` (3), then dropped with a warning.  Tasks sent while no replica
  exists wait in the sender's memory (not durable: lost if the sender dies).
* Events: ``<message type='groupchat'>`` to the events room ``<room>-events``; every bus
  that subscribed (or published) is an occupant; '*'/'#' matching is done locally.
* Jabber-RPC (XEP-0009), disco#info/#items (XEP-0030) and ping (XEP-0199) are answered.
* Security: STARTTLS with a verified certificate and SASL by default; ``?tls=0`` and
  ``?verify=0`` (or ``?ca=FILE``) opt out for test servers; ``?allow=jid1,jid2`` allows
  only those bare JIDs to call (others get ``forbidden``).
* Reconnects with back-off; in-flight work is re-sent after a reconnect.
* Limits: ``?max_size=`` (default 180,000 bytes, so that base64 fits Prosody's default
  256 KiB stanza limit).  No durable tasks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, ClassVar
from xml.sax.saxutils import escape

from ...eager import start_eagerly
from ...wire.codec import Codec, decode
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError
from ...wire.info import ServiceInfo
from ...wire.topics import matches
from ..base import AnswerCallback, Capabilities, EventHandler, Handler, Incoming, Transport
from . import jabber_rpc, stanzas
from .client import Session
from .incoming import RpcIncoming, Served, XmppIncoming
from .options import XmppOptions, parse_url
from .stanzas import NS_ENV, NS_RPC

__all__ = ["XmppTransport"]

log = logging.getLogger("vertebra.transports.xmpp")

_GONE = frozenset({"service-unavailable", "recipient-unavailable", "item-not-found",
                   "remote-server-not-found", "gone", "redirect"})
_CONDITION = {"protocol": "bad-request", "unreachable": "item-not-found",
              "timeout": "remote-server-timeout", "forbidden": "forbidden"}
_MUC_NS = "http://jabber.org/protocol/muc"


def _unreachable(env: Envelope, why: str) -> Envelope:
    return env.fail({"code": "unreachable", "type": "Unreachable", "message": why, "traceback": ""})


@dataclass(slots=True)
class _Out:
    """A call, cast or task we sent and that is not answered/acknowledged yet."""

    env: Envelope
    data: bytes
    target: str = ""
    sid: str = ""
    attempts: int = 0
    rejections: int = 0
    gone: set[str] = field(default_factory=set)
    held_since: float = 0.0
    settled: asyncio.Future[None] | None = None   # casts and tasks: resolved when acknowledged


@dataclass(slots=True)
class _Peer:
    jid: str
    load: int
    services: dict[str, dict[str, Any]]


class XmppTransport(Transport):
    """The XMPP transport; see the module docstring."""

    scheme: ClassVar[str] = "xmpp"
    capabilities: ClassVar[Capabilities] = Capabilities(
        durable_tasks=False, task_redelivery=True, fast_unreachable=True, multi_process=True,
        max_message_size=180_000)

    def __init__(self, url: str, codec: Codec) -> None:
        super().__init__(url, codec)
        self.opts: XmppOptions = parse_url(url, self.capabilities.max_message_size)
        o = self.opts
        self.room = f"{o.room}@{o.muc}"
        self.events_room = f"{o.room}-events@{o.muc}"
        self.nick = f"{o.user}.{o.resource}"
        self.jid = o.full
        self.stats.update({"duplicates": 0, "resent": 0, "forbidden": 0})
        self._on_answer: AnswerCallback | None = None
        self._session: Session | None = None
        self._closed = False
        self._peers: dict[str, _Peer] = {}           # room nick -> peer
        self._served: dict[str, Served] = {}
        self._out: dict[str, _Out] = {}              # envelope id -> in flight
        self._sids: dict[str, str] = {}              # stanza id -> envelope id
        self._per_target: collections.Counter[str] = collections.Counter()
        self._waiting: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._rr = itertools.count()
        self._sid_prefix = os.urandom(4).hex()
        self._sid_seq = itertools.count(1)
        # receiving side: envelope id -> (sender full JID, IQ id) of the latest copy
        self._inflight: dict[str, tuple[str, str]] = {}
        self._done: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._subs: list[tuple[str, EventHandler]] = []
        self._in_events_room = False
        self._joined: asyncio.Future[None] | None = None
        self._events_joined: asyncio.Future[None] | None = None
        self._reflected: asyncio.Future[None] | None = None
        self._presence_pending = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def connect(self, on_answer: AnswerCallback) -> None:
        """Log in, join the directory room, and start answering."""
        self._on_answer = on_answer
        loop = asyncio.get_running_loop()
        self._joined = loop.create_future()
        self._session = Session(self.opts, self._accept, self._on_stanza, self._online,
                                self._offline)
        await self._session.start()
        try:
            await asyncio.wait_for(asyncio.shield(self._joined), 10)
        except TimeoutError as exc:
            await self._session.close()
            raise ConnectionError(f"could not join the directory room {self.room}") from exc
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def close(self) -> None:
        """Leave the rooms and log out; senders re-route what we did not acknowledge."""
        if self._closed:
            return
        self._closed = True
        for out in self._out.values():   # not acknowledged: the outbox still holds them
            if out.settled is not None and not out.settled.done():
                out.settled.set_exception(ConnectionError("xmpp transport closed"))
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._session is not None:
            await self._session.close()
            self.stats["reconnects"] = self._session.reconnects
        for task in list(self._tasks):
            task.cancel()

    def _online(self) -> None:
        """(Re)connected: join the rooms, then re-send everything in flight."""
        self._peers.clear()
        self._send_presence(join=True)
        if self._in_events_room:
            self._session_send(f"<presence to='{self.events_room}/{self.nick}'>"
                               f"<x xmlns='{_MUC_NS}'><history maxstanzas='0'/></x></presence>")

    def _offline(self) -> None:
        self._peers.clear()
        loop = asyncio.get_running_loop()
        self._joined = loop.create_future()
        if self._in_events_room:
            self._events_joined = loop.create_future()

    def _session_send(self, text: str) -> bool:
        return self._session is not None and self._session.send(text)

    # -- presence ---------------------------------------------------------------------------

    def _load(self) -> int:
        return sum(s.running + len(s.held) for s in self._served.values())

    def _send_presence(self, join: bool = False) -> None:
        services = [s.info.to_dict() for s in self._served.values() if s.active]
        muc = f"<x xmlns='{_MUC_NS}'><history maxstanzas='0'/></x>" if join else ""
        node = stanzas.presence_node(self.jid, self._load(), services)
        self._session_send(f"<presence to='{self.room}/{escape(self.nick)}'>{muc}{node}</presence>")

    def _presence_soon(self) -> None:
        """Advertise a changed load, at most every 50 ms."""
        if self._presence_pending:
            return
        self._presence_pending = True

        def fire() -> None:
            self._presence_pending = False
            self._send_presence()
        asyncio.get_running_loop().call_later(0.05, fire)

    def _on_presence(self, xml: ET.Element, frm: str) -> None:
        room, _, nick = frm.partition("/")
        if nick == self.nick and xml.find(
                f"{{{stanzas.NS_MUC_USER}}}x/{{{stanzas.NS_MUC_USER}}}status[@code='201']") is not None:
            # we created a locked room: accept the default configuration (instant room)
            self._session_send(f"<iq type='set' to='{room}' id='vt-instant'><query xmlns="
                               f"'{_MUC_NS}#owner'><x xmlns='jabber:x:data' type='submit'/>"
                               "</query></iq>")
        if room == self.events_room:
            if nick == self.nick and self._events_joined is not None and not self._events_joined.done():
                self._events_joined.set_result(None)
            return
        if not nick:
            return
        if xml.get("type") == "unavailable":
            peer = self._peers.pop(nick, None)
            if peer is not None:
                self._target_gone(peer.jid)
            return
        if xml.get("type") == "error":
            log.warning("%s: presence error from %s: %s", self.jid, frm,
                        stanzas.error_condition(xml))
            return
        node = stanzas.node_of(xml)
        if node is not None:
            jid, load, services = node
            old = self._peers.get(nick)
            self._peers[nick] = _Peer(jid, load, {str(s.get("name")): s for s in services})
            if old is not None and old.jid != jid:
                self._target_gone(old.jid)
            for name in self._peers[nick].services:
                if self._waiting.get(name):
                    self._flush_waiting(name)
        if nick == self.nick and self._reflected is not None and not self._reflected.done():
            self._reflected.set_result(None)
        if nick == self.nick and self._joined is not None and not self._joined.done():
            self._joined.set_result(None)
            self._resend_all()

    # -- sending ----------------------------------------------------------------------------

    def _encode(self, env: Envelope) -> bytes:
        data = self.codec.encode(env)
        if len(data) > self.opts.max_size:
            raise ProtocolError(f"message of {len(data)} bytes exceeds the maximum "
                                f"{self.opts.max_size}")
        return data

    async def send(self, env: Envelope) -> None:
        """Route a call, cast or task to one replica; an event to the events room."""
        s = self._session
        if self._closed or s is None or not s.online:
            raise ConnectionError("xmpp transport is not connected")
        if env.kind == "event":
            data = self._encode(env)
            await self._join_events()
            body = stanzas.env_element(data)
            if not self._session_send(f"<message type='groupchat' to='{self.events_room}'>"
                                      f"{body}</message>"):
                raise ConnectionError("xmpp transport is not connected")
            return
        if env.kind == "call":
            env.reply_to = self.jid
        out = _Out(env, self._encode(env))
        self._out[env.id] = out
        if env.kind == "call":
            self._route(out)
            return
        # A cast or task is sent once a replica has acknowledged it. There is no broker:
        # until then only this process holds it, so the outbox (and its spool, if any)
        # must keep it; the outbox's send window keeps these waits in parallel.
        out.settled = asyncio.get_running_loop().create_future()
        self._route(out)
        try:
            await out.settled
        except asyncio.CancelledError:
            self._finish_out(env.id)
            raise

    def _choose(self, service: str, gone: set[str]) -> str:
        best: list[str] = []
        score = 1 << 62
        for peer in self._peers.values():
            if service not in peer.services or peer.jid in gone:
                continue
            sc = peer.load + self._per_target[peer.jid]
            if sc < score:
                best, score = [peer.jid], sc
            elif sc == score:
                best.append(peer.jid)
        if not best:
            return ""
        return best[next(self._rr) % len(best)]

    def _route(self, out: _Out) -> None:
        """Send ``out`` to the best replica, or hold/fail it when there is none."""
        env = out.env
        target = self._choose(env.service, out.gone)
        if not target and out.gone:
            out.gone.clear()   # every replica was tried: any of them again
            target = self._choose(env.service, out.gone)
        if not target:
            if env.kind == "call" and (out.attempts == 0 or (not out.held_since and
                                       self.opts.grace <= 0)):
                self._finish_out(env.id)
                self._answer_now(_unreachable(env, f"no replica of service {env.service!r}"))
                return
            if env.kind == "call" and not out.held_since:
                out.held_since = time.monotonic()
            self._waiting[env.service].append(env.id)
            return
        out.held_since = 0.0
        self._transmit(out, target)

    def _transmit(self, out: _Out, target: str) -> None:
        if out.sid:
            self._sids.pop(out.sid, None)
        if out.target:
            self._per_target[out.target] -= 1
        out.sid = f"vt{self._sid_prefix}{next(self._sid_seq):x}"
        out.target = target
        out.attempts += 1
        if out.attempts > 1:
            self.stats["resent"] += 1
        self._sids[out.sid] = out.env.id
        self._per_target[target] += 1
        self._session_send(stanzas.set_iq(target, out.sid, out.data))  # offline: resent later

    def _finish_out(self, env_id: str) -> _Out | None:
        out = self._out.pop(env_id, None)
        if out is not None:
            if out.settled is not None and not out.settled.done():
                out.settled.set_result(None)
            if out.sid:
                self._sids.pop(out.sid, None)
            if out.target:
                self._per_target[out.target] -= 1
        return out

    def _target_gone(self, jid: str) -> None:
        """A replica left: what it did not answer goes to another one."""
        for out in [o for o in self._out.values() if o.target == jid]:
            out.gone.add(jid)
            self._per_target[jid] -= 1
            self._sids.pop(out.sid, None)
            out.target, out.sid = "", ""
            self._route(out)

    def _resend_all(self) -> None:
        """After (re)joining: every unanswered message goes out again."""
        present = {p.jid for p in self._peers.values()}
        for out in list(self._out.values()):
            if out.target and out.target in present:
                self._transmit(out, out.target)
            elif out.env.id in self._out and not out.target:
                pass  # waiting for a replica
            else:
                if out.target:
                    self._per_target[out.target] -= 1
                    self._sids.pop(out.sid, None)
                out.target, out.sid = "", ""
                self._route(out)

    def _flush_waiting(self, service: str) -> None:
        q = self._waiting.pop(service, collections.deque())
        for env_id in q:
            out = self._out.get(env_id)
            if out is not None and not out.target:
                self._route(out)

    async def _sweep(self) -> None:
        """Forget expired calls; fail calls held past the grace period."""
        while True:
            await asyncio.sleep(0.25)
            now, mono = time.time(), time.monotonic()
            for env_id, out in list(self._out.items()):
                if out.env.kind == "call" and out.env.expired(now):
                    self._finish_out(env_id)
                elif out.held_since and mono - out.held_since > self.opts.grace:
                    self._finish_out(env_id)
                    self._answer_now(_unreachable(out.env, f"no replica of {out.env.service!r} "
                                                           "came back"))

    def _answer_now(self, answer: Envelope) -> None:
        if self._on_answer is not None:
            self._on_answer(answer)

    # -- receiving --------------------------------------------------------------------------

    def _accept(self, xml: ET.Element) -> bool:
        tag = xml.tag
        if tag == "{jabber:client}iq":
            kind = xml.get("type")
            if kind in ("result", "error"):
                return xml.get("id", "") in self._sids
            return len(xml) > 0 and xml[0].tag != "{jabber:iq:roster}query"
        frm = xml.get("from", "")
        if tag == "{jabber:client}presence":
            return frm.startswith(self.room + "/") or frm.startswith(self.events_room + "/")
        if tag == "{jabber:client}message":
            return frm.startswith(self.events_room + "/") and xml.get("type") == "groupchat"
        return False

    def _on_stanza(self, xml: ET.Element) -> None:
        try:
            tag = xml.tag
            if tag == "{jabber:client}iq":
                kind = xml.get("type")
                if kind in ("result", "error"):
                    self._on_iq_answer(xml, kind)
                else:
                    self._on_iq_request(xml)
            elif tag == "{jabber:client}presence":
                self._on_presence(xml, xml.get("from", ""))
            elif tag == "{jabber:client}message":
                self._on_event(xml)
        except Exception:   # never let one stanza break the stream
            log.exception("%s: failed to handle a stanza", self.jid)

    def _on_iq_answer(self, xml: ET.Element, kind: str | None) -> None:
        env_id = self._sids.get(xml.get("id", ""), "")
        out = self._out.get(env_id)
        if out is None:
            return
        try:
            data = stanzas.env_of(xml)
        except ValueError:
            data = None
        if kind == "result":
            self._finish_out(env_id)
            if out.env.kind == "call" and data is not None:
                self._deliver_answer(out.env, data)
            return
        condition = stanzas.error_condition(xml)
        if data is not None:
            self._finish_out(env_id)
            if out.env.kind == "call":
                self._deliver_answer(out.env, data)
            else:
                log.warning("%s: %s %s.%s refused: %s", self.jid, out.env.kind, out.env.service,
                            out.env.method, condition)
            return
        if condition in _GONE:          # that replica cannot take it: another one
            out.gone.add(out.target)
            self._per_target[out.target] -= 1
            self._sids.pop(out.sid, None)
            out.target, out.sid = "", ""
            self._route(out)
        elif condition == "resource-constraint" and out.env.kind != "call":   # requeued
            out.rejections += 1
            if out.rejections >= self.opts.max_attempts:
                self._finish_out(env_id)
                log.warning("%s: dropped %s %s.%s after %d attempts; last error: %s", self.jid,
                            out.env.kind, out.env.service, out.env.method, out.rejections,
                            stanzas.error_text(xml))
            else:
                self._per_target[out.target] -= 1
                self._sids.pop(out.sid, None)
                out.target, out.sid = "", ""
                self._route(out)
        else:
            self._finish_out(env_id)
            if out.env.kind == "call":
                code = "unreachable" if condition == "forbidden" else "protocol"
                self._answer_now(out.env.fail({"code": code, "type": condition or "error",
                                               "message": f"XMPP error: {condition}",
                                               "traceback": ""}))

    def _deliver_answer(self, call: Envelope, data: bytes) -> None:
        try:
            env = decode(data)
        except ProtocolError as exc:
            self.stats["malformed"] += 1
            log.warning("%s: malformed answer: %s", self.jid, exc)
            self._answer_now(call.fail({"code": "protocol", "type": "ProtocolError",
                                        "message": f"malformed answer: {exc}", "traceback": ""}))
            return
        if env.kind in ("reply", "error"):
            env.re = env.re or call.id
            self._answer_now(env)

    def _allowed(self, frm: str) -> bool:
        allow = self.opts.allow
        return not allow or frm.split("/", 1)[0].lower() in allow

    def _on_iq_request(self, xml: ET.Element) -> None:
        frm, sid = xml.get("from", ""), xml.get("id", "")
        payload = xml[0]
        ns = payload.tag[1:].split("}", 1)[0] if payload.tag.startswith("{") else ""
        if ns == NS_ENV and xml.get("type") == "set":
            self._on_envelope(xml, frm, sid)
        elif ns == NS_RPC and xml.get("type") == "set":
            self._on_rpc(payload, frm, sid)
        elif ns == stanzas.NS_PING and xml.get("type") == "get":
            self._session_send(stanzas.result_iq(frm, sid))
        elif ns == stanzas.NS_DISCO_INFO and xml.get("type") == "get":
            self._session_send(stanzas.result_iq(frm, sid, self._disco_info()))
        elif ns == stanzas.NS_DISCO_ITEMS and xml.get("type") == "get":
            self._session_send(stanzas.result_iq(frm, sid, self._disco_items()))
        else:
            self._session_send(stanzas.error_iq(frm, sid, "feature-not-implemented",
                                                text=f"unsupported namespace {ns!r}"))

    def _refuse(self, frm: str, sid: str, condition: str, text: str, env_id: str = "",
                code: str = "protocol") -> None:
        inner = ""
        if env_id:
            err = Envelope("error", re=env_id, error={"code": code, "type": "ProtocolError"
                                                      if code == "protocol" else condition,
                                                      "message": text, "traceback": ""})
            with contextlib.suppress(ProtocolError):
                inner = stanzas.env_element(self.codec.encode(err))
        etype = "auth" if condition == "forbidden" else "modify"
        self._session_send(stanzas.error_iq(frm, sid, condition, etype, text, inner))

    def _on_envelope(self, xml: ET.Element, frm: str, sid: str) -> None:
        try:
            data = stanzas.env_of(xml)
        except ValueError as exc:
            self.stats["malformed"] += 1
            log.warning("%s: malformed IQ from %s: %s", self.jid, frm, exc)
            self._refuse(frm, sid, "bad-request", str(exc))
            return
        assert data is not None
        if len(data) > self.opts.max_size:
            self.stats["malformed"] += 1
            self._refuse(frm, sid, "not-acceptable",
                         f"envelope of {len(data)} bytes exceeds {self.opts.max_size}")
            return
        try:
            env = decode(data)
        except ProtocolError as exc:
            self.stats["malformed"] += 1
            log.warning("%s: malformed envelope from %s: %s", self.jid, frm, exc)
            condition = "feature-not-implemented" if "version" in str(exc) else "bad-request"
            self._refuse(frm, sid, condition, str(exc), exc.envelope_id)
            return
        if not self._allowed(frm):
            self.stats["forbidden"] += 1
            self._refuse(frm, sid, "forbidden", f"{frm.split('/')[0]} may not call this node",
                         env.id, code="forbidden")
            return
        if env.kind not in ("call", "cast", "task"):
            self.stats["malformed"] += 1
            self._refuse(frm, sid, "bad-request", f"a {env.kind} cannot be sent in an IQ", env.id)
            return
        done = self._done.get(env.id)
        if done is not None:       # a duplicate of finished work: answer it again
            self.stats["duplicates"] += 1
            self._session_send(stanzas.result_iq(frm, sid, done))
            return
        if env.id in self._inflight:   # a duplicate of running work: answer the new copy
            self.stats["duplicates"] += 1
            self._inflight[env.id] = (frm, sid)
            return
        served = self._served.get(env.service)
        if served is None or not served.active:
            self._session_send(stanzas.error_iq(frm, sid, "service-unavailable",
                                                text=f"{env.service!r} is not served here"))
            return
        if env.kind == "call":
            env.reply_to = frm
        self._inflight[env.id] = (frm, sid)
        if served.running >= served.prefetch:
            served.held.append((env, frm, sid))
            return
        self._start(served, env)

    def _start(self, served: Served, env: Envelope) -> None:
        served.running += 1
        self._presence_soon()
        start_eagerly(self._run(served, XmppIncoming(self, served, env)), self._tasks)

    async def _run(self, served: Served, incoming: Incoming) -> None:
        try:
            await served.handler(incoming)
        except Exception:
            log.exception("%s: handler failed", self.jid)
            await incoming.reject(False)

    def _remember(self, env_id: str, inner: str) -> None:
        self._done[env_id] = inner
        if len(self._done) > 20_000:
            self._done.popitem(last=False)

    def _answer(self, call: Envelope, answer: Envelope) -> None:
        """Send the answer to a call (to the latest copy's sender)."""
        to, sid = self._inflight.get(call.id, (call.reply_to, ""))
        try:
            data = self._encode(answer)
        except ProtocolError as exc:
            data = self.codec.encode(call.fail({"code": "protocol", "type": "ProtocolError",
                                                "message": str(exc), "traceback": ""}))
            answer = Envelope("error")
        inner = stanzas.env_element(data)
        if answer.kind == "reply":
            self._remember(call.id, inner)
            text = stanzas.result_iq(to, sid, inner)
        else:
            code = str((answer.error or {}).get("code", "remote"))
            text = stanzas.error_iq(to, sid, _CONDITION.get(code, "undefined-condition"),
                                    "cancel", inner=inner)
        self._session_send(text)
        self._inflight.pop(call.id, None)

    def _settle(self, served: Served, env: Envelope, requeue: bool | None,
                why: str = "") -> None:
        where = self._inflight.pop(env.id, None)
        if where is not None:
            to, sid = where
            if requeue is None:
                self._remember(env.id, "")
                self._session_send(stanzas.result_iq(to, sid))
            elif requeue:
                self._session_send(stanzas.error_iq(to, sid, "resource-constraint", "wait",
                                                    why or "requeued"))
            else:
                self._remember(env.id, "")
                self._session_send(stanzas.error_iq(to, sid, "not-acceptable", "cancel",
                                                    why or "rejected"))
        self._finish(served)

    def _finish(self, served: Served) -> None:
        served.running -= 1
        while served.held and served.running < served.prefetch and served.active:
            env, _frm, _sid = served.held.popleft()
            self._start(served, env)
        self._presence_soon()

    # -- Jabber-RPC, disco ------------------------------------------------------------------

    def _on_rpc(self, query: ET.Element, frm: str, sid: str) -> None:
        if not self._allowed(frm):
            self.stats["forbidden"] += 1
            self._session_send(stanzas.error_iq(frm, sid, "forbidden", "auth"))
            return
        try:
            name, args = jabber_rpc.parse_call(query)
        except (jabber_rpc.RpcError, ValueError) as exc:
            self.stats["malformed"] += 1
            self._session_send(stanzas.error_iq(frm, sid, "bad-request", "modify", str(exc)))
            return
        service, _, method = name.rpartition(".")
        candidates = [s for s in self._served.values() if s.active and
                      (not service or s.info.name == service)]
        served = next((s for s in candidates if (m := s.info.method(method)) is not None
                       and m.kind == "rpc"), None)
        if served is None:
            self._session_send(stanzas.result_iq(frm, sid, jabber_rpc.fault(
                404, f"no method {name!r} here")))
            return
        env = Envelope("call", service=served.info.name, method=method, args=args,
                       reply_to=frm, deadline=time.time() + 60)
        served.running += 1
        start_eagerly(self._run(served, RpcIncoming(self, served, env, frm, sid)), self._tasks)

    def _disco_info(self) -> str:
        feats = [stanzas.NS_DISCO_INFO, stanzas.NS_DISCO_ITEMS, NS_RPC, NS_ENV, stanzas.NS_PING]
        body = "".join(f"<feature var='{f}'/>" for f in feats)
        return (f"<query xmlns='{stanzas.NS_DISCO_INFO}'><identity category='automation' "
                f"type='rpc' name='vertebra'/>{body}</query>")

    def _disco_items(self) -> str:
        jid = escape(self.jid)
        items = [f"<item jid='{jid}' node='{escape(s.info.name)}.{escape(m.name)}' "
                 f"name='{escape(m.kind)}'/>"
                 for s in self._served.values() if s.active for m in s.info.methods]
        return f"<query xmlns='{stanzas.NS_DISCO_ITEMS}'>{''.join(items)}</query>"

    # -- serving, events, discovery ---------------------------------------------------------

    async def serve(self, info: ServiceInfo, handler: Handler, prefetch: int = 16) -> None:
        """Become a replica of ``info.name``: announce it in the directory room."""
        self._served[info.name] = Served(info, handler, max(1, prefetch))
        await self._announce()

    async def _announce(self) -> None:
        """Send our presence and wait until the room reflects it (so others have it too)."""
        loop = asyncio.get_running_loop()
        self._reflected = loop.create_future()
        self._send_presence()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reflected), 5)

    async def unserve(self, service: str) -> None:
        """Stop taking work for ``service``: held copies go back to their senders."""
        served = self._served.get(service)
        if served is None:
            return
        served.active = False
        while served.held:
            env, frm, sid = served.held.popleft()
            self._inflight.pop(env.id, None)
            self._session_send(stanzas.error_iq(frm, sid, "service-unavailable",
                                                text="service stopped"))
        self._send_presence()

    async def _join_events(self) -> None:
        if not self._in_events_room:
            self._in_events_room = True
            self._events_joined = asyncio.get_running_loop().create_future()
            self._session_send(f"<presence to='{self.events_room}/{escape(self.nick)}'>"
                               f"<x xmlns='{_MUC_NS}'><history maxstanzas='0'/></x></presence>")
        if self._events_joined is not None and not self._events_joined.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._events_joined), 10)
            except TimeoutError as exc:
                raise ConnectionError("could not join the events room") from exc

    async def subscribe(self, pattern: str, handler: EventHandler) -> None:
        """Receive events matching ``pattern`` (joins the events room once)."""
        self._subs.append((pattern, handler))
        await self._join_events()

    def _on_event(self, xml: ET.Element) -> None:
        if xml.find(f"{{{stanzas.NS_DELAY}}}delay") is not None:
            return   # room history, not a live event
        try:
            data = stanzas.env_of(xml)
            if data is None:
                return
            env = decode(data)
        except (ValueError, ProtocolError) as exc:
            self.stats["malformed"] += 1
            log.warning("%s: malformed event: %s", self.jid, exc)
            return
        if env.kind != "event":
            self.stats["malformed"] += 1
            return
        for pattern, handler in self._subs:
            if matches(pattern, env.topic):
                start_eagerly(self._run_event(handler, env), self._tasks)

    async def _run_event(self, handler: EventHandler, env: Envelope) -> None:
        try:
            await handler(env)
        except Exception:
            log.exception("%s: event handler failed", self.jid)

    async def discover(self) -> list[ServiceInfo]:
        """Services announced in the directory room, replicas counted."""
        found: dict[str, tuple[dict[str, Any], int]] = {}
        for peer in self._peers.values():
            for name, d in peer.services.items():
                first, n = found.get(name, (d, 0))
                found[name] = (first, n + 1)
        out = []
        for name, (d, n) in found.items():
            info = ServiceInfo.from_dict(d)
            out.append(ServiceInfo(name, info.methods, info.doc, n, self.scheme, info.extra))
        return out

    # -- fault injection for tests ----------------------------------------------------------

    def drop_connection(self) -> None:
        """Cut the TCP connection now (tests: a network failure); it reconnects by itself."""
        if self._session is not None:
            self._session.drop()
