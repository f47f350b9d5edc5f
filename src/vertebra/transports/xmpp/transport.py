"""xmpp:// — vertebra over XMPP (slixmpp), tested against a private Prosody.

Capability sheet
----------------
* Addressing: every bus is one client session ``user@domain/resource``.  Services are
  found through a directory room (XEP-0045 MUC, ``?room=`` on ``?muc=``): each bus joins
  it with a presence that carries a ``<node xmlns='urn:vertebra:presence:1'/>`` listing the
  services it serves, its full JID and its load (:mod:`.directory`).
* Calls: ``<iq type='set'>`` with the encoded envelope to one replica (least busy first,
  round robin among equals); the ``result`` IQ carries the reply, an ``error`` IQ the
  error envelope.  No replica: Unreachable at once — unless the service had one within
  the last ``?grace=`` seconds (3) or this bus has just (re)joined, then the call waits
  that long for one.  Calls in flight to a replica that vanishes go to another one.
* Streamed calls (header ``stream``): the node sends each ``item`` and ``beat`` to the
  caller's full JID in a ``<message type='headline'>`` carrying the envelope, on the same
  stream as (so ahead of) the final IQ result/error.  Once items have come, the replica
  going away (or our own connection dropping) answers the call ``unreachable``.
* Casts and tasks: the same IQ; the ``result`` is the acknowledgement, sent after the
  handler finished.  ``send()`` waits for it at most ``?ack_wait=`` seconds (30) and, with
  no replica, at most ``grace`` seconds, then fails with ConnectionError so that the outbox
  (and its spool) keeps the message and retries it (:mod:`.outgoing`).  Re-sent to another
  replica when its replica goes away (at-least-once); receivers suppress duplicates.  A
  task lost with ``?max_redeliveries=`` (10) replicas is buried as ``WorkerLost``.
* Attempts are the node's: a task rejected for good is buried by its replica in the PEP
  node ``vertebra.dead.<service>`` of its account (XEP-0060/0163, on the server, durable
  where the server's storage is); ``dead_letters``/``replay`` read and empty it
  (:mod:`.deadletters`).
* Events: ``<message type='groupchat'>`` to the events room ``<room>-events`` (:mod:`.events`).
* No priorities (``priorities=False``): there is no queue to order; each message goes at
  once to an available replica chosen by presence and load.  No delayed delivery on the
  server (``holds_delayed=False``): the sender's outbox holds a ``not_before`` message.
* Jabber-RPC (XEP-0009), disco#info/#items (XEP-0030) and ping (XEP-0199) are answered
  (:mod:`.interop`).
* A stable address per service for clients that join nothing: ``S@GATEWAY``, an XEP-0114
  component (``?gateway=DOMAIN&gateway_secret=...``) held by one bus of the network at a
  time, which forwards to a replica (:mod:`.gateway`).
* Security: STARTTLS with a verified certificate and SASL by default; ``?tls=0`` and
  ``?verify=0`` (or ``?ca=FILE``) opt out for test servers; ``?allow=jid1,jid2`` allows
  only those bare JIDs to call (others get ``forbidden``).
* Down (connecting, reconnecting, not yet back in the directory room): ``send`` raises a
  plain ConnectionError, which the Bus retries.  Reconnects with back-off (:mod:`.client`).
* Limits: ``?max_size=`` (default 180,000 bytes, so that base64 fits Prosody's default
  256 KiB stanza limit).  Tasks not yet acknowledged live in the sender (not durable).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import xml.etree.ElementTree as ET
from typing import ClassVar

from ...wire.codec import Codec
from ...wire.deadletter import DeadLetter
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError
from ...wire.info import ServiceInfo
from ..base import AnswerCallback, Capabilities, EventHandler, Handler, Transport
from . import stanzas
from .client import Session
from .deadletters import DeadLetters
from .directory import Directory
from .events import Events
from .gateway import Gateway
from .options import XmppOptions, parse_url
from .outgoing import Outgoing
from .serving import Serving

__all__ = ["XmppTransport"]

log = logging.getLogger("vertebra.transports.xmpp")


class XmppTransport(Transport):
    """The XMPP transport; see the module docstring."""

    scheme: ClassVar[str] = "xmpp"
    capabilities: ClassVar[Capabilities] = Capabilities(
        durable_tasks=False, task_redelivery=True, fast_unreachable=True, multi_process=True,
        max_message_size=180_000, holds_delayed=False, priorities=False)

    def __init__(self, url: str, codec: Codec) -> None:
        super().__init__(url, codec)
        self.opts: XmppOptions = parse_url(url, self.capabilities.max_message_size)
        self.jid = self.opts.full
        self.nick = f"{self.opts.user}.{self.opts.resource}"
        self.stats.update({"duplicates": 0, "resent": 0, "forbidden": 0, "buried": 0,
                           "bury_failed": 0, "worker_lost": 0, "forwarded": 0})
        self.tasks: set[asyncio.Task[None]] = set()
        self.directory = Directory(self)
        self.outgoing = Outgoing(self)
        self.serving = Serving(self)
        self.events = Events(self)
        self.dead = DeadLetters(self)
        self.gateway = Gateway(self)
        self._on_answer: AnswerCallback | None = None
        self._session: Session | None = None
        self._closed = False
        self._requests: dict[str, asyncio.Future[ET.Element]] = {}
        self._req_prefix = os.urandom(3).hex()
        self._req_seq = itertools.count(1)
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def connect(self, on_answer: AnswerCallback) -> None:
        """Log in, join the directory room, and start answering."""
        self._on_answer = on_answer
        self.directory.reset()
        self._session = Session(self.opts, self._accept, self._on_stanza, self._online,
                                self._offline)
        await self._session.start()
        try:
            await self.directory.wait_joined(10)
        except ConnectionError:
            await self._session.close()
            raise
        self._sweeper = asyncio.ensure_future(self._sweep())
        self.gateway.start()

    async def close(self) -> None:
        """Leave the rooms and log out; senders re-route what we did not acknowledge."""
        if self._closed:
            return
        self._closed = True
        await self.gateway.close()
        owned = self.outgoing.close()      # waiting sends fail: the outbox still holds them
        if owned:
            log.warning("%s: closing with %d handed-on or replayed task(s) not acknowledged",
                        self.jid, owned)
        self._fail_requests(ConnectionError("xmpp transport closed"))
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._session is not None:
            await self._session.close()
            self.stats["reconnects"] = self._session.reconnects
        for task in list(self.tasks):
            task.cancel()

    def _online(self) -> None:
        """(Re)connected: join the rooms; the directory re-sends what is in flight."""
        self.directory.online()
        self.events.online()

    def _offline(self) -> None:
        self.directory.offline()
        self.events.offline()
        self.outgoing.offline()
        self.gateway.offline()
        self._fail_requests(ConnectionError("xmpp connection lost"))

    @property
    def ready(self) -> bool:
        """Connected and in the directory room: messages can be routed."""
        s = self._session
        return not self._closed and s is not None and s.online and self.directory.joined

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.outgoing.sweep()

    # -- used by the parts ------------------------------------------------------------------

    def send_xml(self, text: str) -> bool:
        """Send raw XML; False (nothing sent) while offline."""
        return self._session is not None and self._session.send(text)

    def encode(self, env: Envelope, codec: Codec | None = None) -> bytes:
        """``env`` in ``codec`` (default: the bus's); ProtocolError above ``max_size``."""
        data = (codec or self.codec).encode(env)
        if len(data) > self.opts.max_size:
            raise ProtocolError(f"message of {len(data)} bytes exceeds the maximum "
                                f"{self.opts.max_size}")
        return data

    def answer_now(self, answer: Envelope) -> None:
        """Hand an answer (reply, error, item, beat) for one of our calls to the Bus."""
        if self._on_answer is not None:
            self._on_answer(answer)

    async def request(self, kind: str, body: str, to: str = "", timeout: float = 10.0) -> ET.Element:
        """Send an IQ ``get``/``set`` and return its result; IqError for an error answer,
        ConnectionError when offline, when the connection drops or after ``timeout``."""
        if not self.ready:
            raise ConnectionError("xmpp transport is not connected")
        sid = f"vq{self._req_prefix}{next(self._req_seq):x}"
        fut: asyncio.Future[ET.Element] = asyncio.get_running_loop().create_future()
        self._requests[sid] = fut
        try:
            if not self.send_xml(stanzas.request_iq(kind, to, sid, body)):
                raise ConnectionError("xmpp transport is not connected")
            answer = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ConnectionError(f"no answer to an IQ {kind} within {timeout:g}s") from None
        finally:
            self._requests.pop(sid, None)
        if answer.get("type") == "error":
            raise stanzas.IqError(stanzas.error_condition(answer) or "undefined-condition",
                                  stanzas.error_text(answer))
        return answer

    def _fail_requests(self, exc: Exception) -> None:
        for fut in self._requests.values():
            if not fut.done():
                fut.set_exception(exc)

    # -- receiving --------------------------------------------------------------------------

    def _accept(self, xml: ET.Element) -> bool:
        tag = xml.tag
        if tag == "{jabber:client}iq":
            if xml.get("type") in ("result", "error"):
                sid = xml.get("id", "")
                return sid in self.outgoing.sids or sid in self._requests
            return len(xml) > 0 and xml[0].tag != "{jabber:iq:roster}query"
        frm = xml.get("from", "")
        if tag == "{jabber:client}presence":
            return frm.startswith((self.directory.room + "/", self.events.room + "/"))
        if tag == "{jabber:client}message":
            if xml.get("type") == "headline":
                return stanzas.is_answer_message(xml)
            return frm.startswith(self.events.room + "/") and xml.get("type") == "groupchat"
        return False

    def _on_stanza(self, xml: ET.Element) -> None:
        try:
            tag = xml.tag
            if tag == "{jabber:client}iq":
                kind = xml.get("type", "")
                fut = self._requests.get(xml.get("id", "")) if kind in ("result", "error") else None
                if fut is not None:
                    if not fut.done():
                        fut.set_result(xml)
                elif kind in ("result", "error"):
                    self.outgoing.on_answer(xml, kind)
                else:
                    self.serving.on_request(xml)
            elif tag == "{jabber:client}presence":
                self._on_presence(xml)
            elif tag == "{jabber:client}message":
                if xml.get("type") == "headline":
                    self.outgoing.on_message(xml)
                else:
                    self.events.on_message(xml)
        except Exception:   # never let one stanza break the stream
            log.exception("%s: failed to handle a stanza", self.jid)

    def _on_presence(self, xml: ET.Element) -> None:
        room, _, nick = xml.get("from", "").partition("/")
        if nick == self.nick and xml.find(f"{{{stanzas.NS_MUC_USER}}}x/"
                                          f"{{{stanzas.NS_MUC_USER}}}status[@code='201']") is not None:
            # we created a locked room: accept the default configuration (instant room)
            self.send_xml(f"<iq type='set' to='{room}' id='vt-instant'><query xmlns="
                          f"'{stanzas.NS_MUC}#owner'><x xmlns='jabber:x:data' type='submit'/>"
                          "</query></iq>")
        if room == self.events.room:
            self.events.on_presence(xml, nick)
        elif nick:
            self.directory.on_presence(xml, nick)

    # -- the Transport interface ------------------------------------------------------------

    async def send(self, env: Envelope) -> None:
        """Route a call, cast or task to one replica; an event to the events room.

        ConnectionError while down; see :mod:`.outgoing` for how long a cast or task waits."""
        if not self.ready:
            raise ConnectionError("xmpp transport is not connected (or not back in the "
                                  "directory room yet)")
        if env.kind == "event":
            await self.events.publish(env)
        else:
            await self.outgoing.send(env)

    async def serve(self, info: ServiceInfo, handler: Handler, prefetch: int = 16) -> None:
        """Become a replica of ``info.name``: announce it in the directory room."""
        await self.serving.serve(info, handler, prefetch)

    async def unserve(self, service: str) -> None:
        """Stop taking work for ``service``: held copies go back to their senders."""
        await self.serving.unserve(service)

    async def subscribe(self, pattern: str, handler: EventHandler) -> None:
        """Receive events matching ``pattern`` (joins the events room once)."""
        await self.events.subscribe(pattern, handler)

    async def discover(self) -> list[ServiceInfo]:
        """Services announced in the directory room, replicas counted."""
        return self.directory.discover()

    async def dead_letters(self, service: str) -> list[DeadLetter]:
        """The buried tasks of ``service`` (from the PEP nodes of its accounts), oldest first."""
        return await self.dead.letters(service)

    async def replay(self, service: str, ids: list[str] | None = None) -> int:
        """Send buried tasks of ``service`` back as first attempts; how many were sent.

        Needs a live replica (there is no queue to put them in): Unreachable when none
        appears within ``grace``."""
        return await self.dead.replay(service, ids)

    # -- fault injection for tests ----------------------------------------------------------

    def drop_connection(self) -> None:
        """Cut the TCP connection now (tests: a network failure); it reconnects by itself."""
        if self._session is not None:
            self._session.drop()
