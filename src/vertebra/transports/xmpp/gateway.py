"""The gateway: every service at a stable address ``S@GATEWAY``, for clients that join nothing.

An IQ to a bare JID is answered by the server itself (RFC 6121 §8.5.2.1.3; Prosody says
``service-unavailable``), so a service's account cannot be its address for a stock
Jabber-RPC client.  An XEP-0114 component can: the server routes every stanza for
``*@GATEWAY`` to the one connection that holds the component domain ``GATEWAY``.

* Holding: every bus whose URL names ``?gateway=DOMAIN&gateway_secret=...`` tries to hold
  it; the server lets one connection in and refuses the others (``conflict``).  The
  holder says so in its directory presence (``gateway='DOMAIN'``); when it leaves the room
  (it died, its connection dropped) the others try at once, and every 30 s at the latest.
  A holder whose client session is down lets the component go (its calls could not be
  routed), and competes again once it is back in the directory room.
* Forwarding: an IQ to ``S@GATEWAY`` is sent on to a replica of ``S`` chosen the usual way
  (least busy first, re-routed when a replica vanishes, :mod:`.outgoing`), from the
  holder's own client session, and the replica's answer comes back from ``S@GATEWAY``.
  A vertebra envelope (``<env/>``) travels unchanged, so its answer is in its own codec.
  A Jabber-RPC call (XEP-0009) becomes a vertebra call: methodName ``method`` or
  ``S.method``; ``faultCode`` 404 no such method, 400 arguments that do not bind, 500 the
  method raised; so a replica needs no XML-RPC of its own.
* Also answered: ping (XEP-0199), disco#info and disco#items (XEP-0030: the domain lists
  the services, ``S@GATEWAY`` its methods), presence probes and subscriptions (available
  while ``S`` has a replica).
* The holder's ``?allow=`` applies to outside callers; replicas see the holder's account
  as the caller (so a replica's own allow-list must include it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from ...backoff import Backoff
from ...wire.codec import Codec, decode
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError, wire_error
from . import interop, jabber_rpc, stanzas
from .component import ComponentStream, Refused, Taken
from .inflight import codec_of, delivery_key

if TYPE_CHECKING:
    from .transport import XmppTransport

__all__ = ["FORWARD_LIMIT", "STANDBY", "Gateway"]

log = logging.getLogger("vertebra.transports.xmpp")

STANDBY = Backoff(base=0.2, cap=30.0)
"""How often a bus that may hold the gateway tries again while another one holds it."""

_LOCAL = {"timeout": "remote-server-timeout"}      # our own failures -> IQ condition
FORWARD_LIMIT = 300.0
"""Seconds the gateway waits for the answer to a forwarded call that has no deadline."""


class Gateway:
    """Holds the component ``?gateway=`` (when this bus is the one) and answers for it."""

    def __init__(self, t: XmppTransport) -> None:
        self.t = t
        self.domain = t.opts.gateway
        self.holding = False
        self._stream: ComponentStream | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._attempt = 0
        self._closed = False

    # -- holding ----------------------------------------------------------------------------

    def start(self) -> None:
        """Begin competing for the gateway (no-op without ``?gateway=``)."""
        if self.domain and self._task is None and not self._closed:
            self._wake = asyncio.Event()
            self._task = asyncio.ensure_future(self._hold())

    def wake(self) -> None:
        """Try now: we are back in the directory room, or the holder left it."""
        self._attempt = 0
        if self._wake is not None:
            self._wake.set()

    async def _hold(self) -> None:
        assert self._wake is not None
        o = self.t.opts
        while not self._closed:
            self._wake.clear()
            if self.t.ready:
                stream = ComponentStream(self.domain, o.gateway_secret, o.gateway_host,
                                         o.gateway_port, self._on_stanza)
                try:
                    await stream.open(10.0)
                except Taken:
                    self._attempt += 1
                except Refused as exc:
                    log.error("%s: the server refused the gateway %s: %s", self.t.jid,
                              self.domain, exc)
                    self._attempt = 1 << 10
                except ConnectionError as exc:
                    log.warning("%s: cannot reach the gateway port: %s", self.t.jid, exc)
                    self._attempt += 1
                else:
                    await self._serve(stream)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), STANDBY.delay(min(self._attempt, 16)))

    async def _serve(self, stream: ComponentStream) -> None:
        self._stream, self.holding = stream, True
        log.info("%s holds the gateway %s", self.t.jid, self.domain)
        self.t.directory.send_presence()
        why = await stream.run()
        self._stream, self.holding = None, False
        self.t.outgoing.drop_forwarded(wire_error("unreachable", "Unreachable", "gateway lost"))
        if not self._closed:
            log.warning("%s: let the gateway %s go: %s", self.t.jid, self.domain, why)
            self.t.directory.send_presence()
        self._attempt = 0

    def offline(self) -> None:
        """Our client session is down: answer what we forwarded, and let the gateway go."""
        if self._stream is not None:
            self.t.outgoing.drop_forwarded(wire_error(
                "unreachable", "Unreachable", "the gateway's connection to the network dropped"))
            self._stream.close()

    async def close(self) -> None:
        """Let the gateway go for good."""
        self._closed = True
        self.offline()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2.0)   # its end, not its exception

    def _send(self, text: str) -> None:
        if self._stream is not None:
            self._stream.send(text)

    # -- stanzas for S@GATEWAY --------------------------------------------------------------

    def _on_stanza(self, xml: ET.Element) -> None:
        tag = xml.tag.rpartition("}")[2]
        frm, to = xml.get("from", ""), xml.get("to", "")
        local = to.split("/", 1)[0].rpartition("@")[0].lower() if "@" in to else ""
        if tag == "presence" and local:
            self._on_presence(xml, frm, to.split("/", 1)[0], local)
        elif tag == "iq" and xml.get("type") in ("get", "set"):
            sid = xml.get("id", "")
            if len(xml) == 0:
                self._send(stanzas.error_iq(frm, sid, "bad-request", "modify", frm=to))
            else:
                self._on_request(xml, frm, to, sid, local)

    def _on_request(self, xml: ET.Element, frm: str, to: str, sid: str, local: str) -> None:
        payload, kind = xml[0], xml.get("type")
        ns = payload.tag[1:].partition("}")[0] if payload.tag.startswith("{") else ""
        if ns == stanzas.NS_PING and kind == "get":
            self._send(stanzas.result_iq(frm, sid, frm=to))
        elif ns == stanzas.NS_DISCO_INFO and kind == "get":
            self._disco_info(frm, sid, to, local)
        elif ns == stanzas.NS_DISCO_ITEMS and kind == "get":
            self._disco_items(frm, sid, to, local)
        elif ns not in (stanzas.NS_RPC, stanzas.NS_ENV) or kind != "set":
            self._send(stanzas.error_iq(frm, sid, "feature-not-implemented",
                                        text=f"unsupported namespace {ns!r}", frm=to))
        elif not local:
            self._send(stanzas.error_iq(frm, sid, "item-not-found", text=f"address a service: "
                                        f"SERVICE@{self.domain}", frm=to))
        elif not self.t.serving.allowed(frm):
            self.t.stats["forbidden"] += 1
            self._send(stanzas.error_iq(frm, sid, "forbidden", "auth", frm=to))
        elif not self.t.ready:
            self._send(stanzas.error_iq(frm, sid, "recipient-unavailable", "wait",
                                        "the gateway is reconnecting", frm=to))
        elif ns == stanzas.NS_RPC:
            self._rpc(payload, frm, sid, to, local)
        else:
            self._envelope(xml, frm, sid, to, local)

    def _on_presence(self, xml: ET.Element, frm: str, bare: str, service: str) -> None:
        kind = xml.get("type", "")
        if kind == "subscribe":
            self._send(f"<presence type='subscribed' from={quoteattr(bare)} "
                       f"to={quoteattr(frm.split('/', 1)[0])}/>")
        if kind in ("subscribe", "probe"):
            off = "" if self.t.directory.has_replica(service) else " type='unavailable'"
            self._send(f"<presence from={quoteattr(bare)} to={quoteattr(frm)}{off}/>")

    # -- Jabber-RPC -------------------------------------------------------------------------

    def _rpc(self, query: ET.Element, frm: str, sid: str, to: str, service: str) -> None:
        def fault(code: int, text: str) -> None:
            self._send(stanzas.result_iq(frm, sid, jabber_rpc.fault(code, text), frm=to))
        try:
            name, args = jabber_rpc.parse_call(query)
        except (jabber_rpc.RpcError, ValueError) as exc:
            self.t.stats["malformed"] += 1
            self._send(stanzas.error_iq(frm, sid, "bad-request", "modify", str(exc), frm=to))
            return
        prefix, _, method = name.rpartition(".")
        if prefix and prefix != service:
            fault(404, f"{service}@{self.domain} has no method {name!r}")
            return
        info = self.t.directory.service(service)
        if info is None and not self.t.directory.recently_live(service):
            self._send(stanzas.error_iq(frm, sid, "item-not-found",
                                        text=f"no service {service!r} here", frm=to))
            return
        if info is not None:
            m = info.method(method)
            if m is None or m.kind != "rpc":
                fault(404, f"service {service!r} has no method {method!r}")
                return
            if not jabber_rpc.fits(m.signature, len(args)):
                self._send(stanzas.result_iq(frm, sid, interop.bad_arguments(
                    f"{service}.{method}", m.signature, len(args)), frm=to))
                return
        env = Envelope("call", service=service, method=method, args=args,
                       deadline=time.time() + 60)
        self.t.stats["forwarded"] += 1
        try:
            data = self.t.encode(env)
        except ProtocolError as exc:
            fault(400, f"ProtocolError: {exc}")
            return
        self.t.outgoing.forward(env, data, f"gw {frm} {sid}",
                                functools.partial(self._rpc_answer, frm, sid, to))

    def _rpc_answer(self, frm: str, sid: str, to: str, xml: ET.Element | None,
                    error: dict[str, Any] | None) -> None:
        if xml is None:
            err = error or {}
            self._send(stanzas.error_iq(frm, sid, _LOCAL.get(err.get("code", ""),
                                                             "recipient-unavailable"),
                                        "wait", str(err.get("message", "")), frm=to))
            return
        answer = _answer_of(xml)
        if answer is not None and answer.kind == "reply":
            try:
                inner = jabber_rpc.response(answer.result)
            except ValueError as exc:
                inner = jabber_rpc.fault(500, f"result not representable in XML-RPC: {exc}")
        elif answer is not None and answer.kind == "error":
            inner = jabber_rpc.fault_of(answer.error or {})
        elif xml.get("type") == "result":
            inner = jabber_rpc.fault(500, "the replica answered without a result")
        else:
            self._send(stanzas.error_iq(frm, sid, stanzas.error_condition(xml) or
                                        "undefined-condition", stanzas.error_type(xml),
                                        stanzas.error_text(xml), frm=to))
            return
        self._send(stanzas.result_iq(frm, sid, inner, frm=to))

    # -- vertebra envelopes -----------------------------------------------------------------

    def _envelope(self, xml: ET.Element, frm: str, sid: str, to: str, service: str) -> None:
        def refuse(condition: str, text: str, env_id: str = "", codec: Codec | None = None) -> None:
            self.t.stats["malformed"] += 1
            inner = ""
            if env_id and codec is not None:
                with contextlib.suppress(ProtocolError):
                    inner = stanzas.env_element(codec.encode(Envelope(
                        "error", re=env_id, error=wire_error("protocol", "ProtocolError", text))))
            self._send(stanzas.error_iq(frm, sid, condition, "modify", text, inner, frm=to))
        try:
            data = stanzas.env_of(xml) or b""
        except ValueError as exc:
            refuse("bad-request", str(exc))
            return
        if len(data) > self.t.opts.max_size:
            refuse("not-acceptable", f"envelope of {len(data)} bytes exceeds "
                                     f"{self.t.opts.max_size}")
            return
        codec = codec_of(data)
        try:
            env = decode(data)
        except ProtocolError as exc:
            refuse("feature-not-implemented" if "version" in str(exc) else "bad-request",
                   str(exc), exc.envelope_id, codec)
            return
        if env.kind not in ("call", "cast", "task"):
            refuse("bad-request", f"a {env.kind} cannot be sent in an IQ", env.id, codec)
            return
        if env.service != service:
            refuse("bad-request", f"{service}@{self.domain} does not take messages for "
                                  f"service {env.service!r}", env.id, codec)
            return
        if env.kind == "call" and env.deadline is None:   # not kept forever if unanswered
            env.deadline = time.time() + FORWARD_LIMIT
        self.t.stats["forwarded"] += 1
        key = f"gw {frm} " + (sid if env.kind == "call" else delivery_key(env))
        self.t.outgoing.forward(env, data, key, functools.partial(
            self._envelope_answer, frm, sid, to, env, codec))

    def _envelope_answer(self, frm: str, sid: str, to: str, env: Envelope, codec: Codec,
                         xml: ET.Element | None, error: dict[str, Any] | None) -> None:
        if xml is None:
            err = error or wire_error("unreachable", "Unreachable", "")
            if env.kind == "call":
                condition = _LOCAL.get(str(err.get("code")), "item-not-found")
                inner = stanzas.env_element(codec.encode(env.fail(err)))
                self._send(stanzas.error_iq(frm, sid, condition, "cancel",
                                            str(err.get("message", "")), inner, frm=to))
            else:
                self._send(stanzas.error_iq(frm, sid, "recipient-unavailable", "wait",
                                            str(err.get("message", "")), frm=to))
            return
        try:
            data = stanzas.env_of(xml)
        except ValueError:
            data = None
        inner = stanzas.env_element(data) if data is not None else ""
        if xml.get("type") == "result":
            self._send(stanzas.result_iq(frm, sid, inner, frm=to))
        else:
            self._send(stanzas.error_iq(frm, sid, stanzas.error_condition(xml) or
                                        "undefined-condition", stanzas.error_type(xml),
                                        stanzas.error_text(xml), inner, frm=to))

    # -- disco ------------------------------------------------------------------------------

    def _disco_info(self, frm: str, sid: str, to: str, service: str) -> None:
        if service and self.t.directory.service(service) is None:
            self._send(stanzas.error_iq(frm, sid, "item-not-found",
                                        text=f"no service {service!r} here", frm=to))
            return
        self._send(stanzas.result_iq(frm, sid, interop.disco_info(service or "vertebra gateway"),
                                     frm=to))

    def _disco_items(self, frm: str, sid: str, to: str, service: str) -> None:
        d = self.t.directory
        if not service:
            names = sorted({n for p in d.peers.values() for n in p.services})
            items = [f"<item jid={quoteattr(f'{n}@{self.domain}')} name={quoteattr(n)}/>"
                     for n in names]
        else:
            info = d.service(service)
            jid = quoteattr(f"{service}@{self.domain}")
            items = [f"<item jid={jid} node={quoteattr(f'{service}.{m.name}')} "
                     f"name={quoteattr(m.kind)}/>" for m in (info.methods if info else ())]
        self._send(stanzas.result_iq(
            frm, sid, f"<query xmlns='{stanzas.NS_DISCO_ITEMS}'>{''.join(items)}</query>", frm=to))


def _answer_of(xml: ET.Element) -> Envelope | None:
    try:
        data = stanzas.env_of(xml)
        return decode(data) if data is not None else None
    except (ValueError, ProtocolError):
        return None
