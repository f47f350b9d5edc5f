"""The receiving side: IQ sets carrying envelopes, run through the served handlers.

A served service runs at most ``prefetch`` messages at once; more wait here (counted in the
advertised load).  Duplicates are suppressed by delivery key (id, attempt, replay token —
:func:`.outgoing.delivery_key`): a copy of finished work is answered again, a copy of
running work moves the eventual answer to the newest IQ.  A task rejected for good is
buried (:mod:`.deadletters`) before its sender is acknowledged; a cast rejected for good is
dropped with a log line.  A task that arrives with the ``dead-error`` header is a poison
task its sender gave up on: it is buried unrun.  Every answer is written in the codec of
the message it answers (docs/PROTOCOL.md §3).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from ...eager import start_eagerly
from ...wire.codec import Codec, decode
from ...wire.deadletter import DEAD_ERROR_HEADER
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError, wire_error
from ...wire.info import ServiceInfo
from ..base import Handler, Incoming
from . import interop, stanzas
from .incoming import Served, XmppIncoming
from .inflight import codec_of, delivery_key
from .stanzas import NS_ENV, NS_RPC

if TYPE_CHECKING:
    from .transport import XmppTransport

__all__ = ["Serving"]

log = logging.getLogger("vertebra.transports.xmpp")

_CONDITION = {"protocol": "bad-request", "unreachable": "item-not-found",
              "timeout": "remote-server-timeout", "forbidden": "forbidden"}


class Serving:
    """The services this bus serves and the work it holds for them."""

    def __init__(self, t: XmppTransport) -> None:
        self.t = t
        self.served: dict[str, Served] = {}
        self.inflight: dict[str, tuple[str, str]] = {}   # key -> (sender, IQ id) of newest copy
        self.done: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._ids: collections.Counter[str] = collections.Counter()   # envelope ids held

    # -- what presence and routing ask ------------------------------------------------------

    def load(self) -> int:
        """Messages running or waiting here."""
        return sum(s.running + len(s.held) for s in self.served.values())

    def infos(self) -> list[dict[str, Any]]:
        """The services announced now, as ServiceInfo maps."""
        return [s.info.to_dict() for s in self.served.values() if s.active]

    def is_running(self, env_id: str) -> bool:
        """Whether a message with this envelope id is held here (running or waiting)."""
        return self._ids[env_id] > 0

    def allowed(self, frm: str) -> bool:
        """Whether ``frm`` may call (the ``?allow=`` list)."""
        allow = self.t.opts.allow
        return not allow or frm.split("/", 1)[0].lower() in allow

    # -- IQ requests ------------------------------------------------------------------------

    def on_request(self, xml: ET.Element) -> None:
        """An IQ get or set addressed to us."""
        frm, sid, kind = xml.get("from", ""), xml.get("id", ""), xml.get("type")
        payload = xml[0]
        ns = payload.tag[1:].split("}", 1)[0] if payload.tag.startswith("{") else ""
        if ns == NS_ENV and kind == "set":
            self._on_envelope(xml, frm, sid)
        elif ns == NS_RPC and kind == "set":
            interop.on_rpc(self, payload, frm, sid)
        elif ns == stanzas.NS_PING and kind == "get":
            self.t.send_xml(stanzas.result_iq(frm, sid))
        elif ns == stanzas.NS_DISCO_INFO and kind == "get":
            self.t.send_xml(stanzas.result_iq(frm, sid, interop.disco_info()))
        elif ns == stanzas.NS_DISCO_ITEMS and kind == "get":
            self.t.send_xml(stanzas.result_iq(frm, sid, interop.disco_items(self)))
        else:
            self.t.send_xml(stanzas.error_iq(frm, sid, "feature-not-implemented",
                                             text=f"unsupported namespace {ns!r}"))

    def _refuse(self, frm: str, sid: str, condition: str, text: str, env_id: str = "",
                code: str = "protocol", codec: Codec | None = None) -> None:
        inner = ""
        if env_id:
            err = Envelope("error", re=env_id, error=wire_error(
                code, "ProtocolError" if code == "protocol" else condition, text))
            with contextlib.suppress(ProtocolError):
                inner = stanzas.env_element((codec or self.t.codec).encode(err))
        etype = "auth" if condition == "forbidden" else "modify"
        self.t.send_xml(stanzas.error_iq(frm, sid, condition, etype, text, inner))

    def _decode(self, xml: ET.Element, frm: str, sid: str) -> tuple[Envelope, Codec] | None:
        try:
            data = stanzas.env_of(xml)
        except ValueError as exc:
            self.t.stats["malformed"] += 1
            log.warning("%s: malformed IQ from %s: %s", self.t.jid, frm, exc)
            self._refuse(frm, sid, "bad-request", str(exc))
            return None
        assert data is not None
        if len(data) > self.t.opts.max_size:
            self.t.stats["malformed"] += 1
            self._refuse(frm, sid, "not-acceptable",
                         f"envelope of {len(data)} bytes exceeds {self.t.opts.max_size}")
            return None
        codec = codec_of(data)
        try:
            return decode(data), codec
        except ProtocolError as exc:
            self.t.stats["malformed"] += 1
            log.warning("%s: malformed envelope from %s: %s", self.t.jid, frm, exc)
            condition = "feature-not-implemented" if "version" in str(exc) else "bad-request"
            self._refuse(frm, sid, condition, str(exc), exc.envelope_id, codec=codec)
            return None

    def _on_envelope(self, xml: ET.Element, frm: str, sid: str) -> None:
        decoded = self._decode(xml, frm, sid)
        if decoded is None:
            return
        env, codec = decoded
        if not self.allowed(frm):
            self.t.stats["forbidden"] += 1
            self._refuse(frm, sid, "forbidden", f"{frm.split('/')[0]} may not call this node",
                         env.id, code="forbidden", codec=codec)
            return
        if env.kind not in ("call", "cast", "task"):
            self.t.stats["malformed"] += 1
            self._refuse(frm, sid, "bad-request", f"a {env.kind} cannot be sent in an IQ", env.id,
                         codec=codec)
            return
        key = delivery_key(env)
        done = self.done.get(key)
        if done is not None:        # a copy of finished work: answer it again
            self.t.stats["duplicates"] += 1
            self.t.send_xml(stanzas.result_iq(frm, sid, done))
            return
        if key in self.inflight:    # a copy of running work: the answer goes to the newest
            self.t.stats["duplicates"] += 1
            self.inflight[key] = (frm, sid)
            return
        served = self.served.get(env.service)
        if served is None or not served.active:
            self.t.send_xml(stanzas.error_iq(frm, sid, "service-unavailable",
                                             text=f"{env.service!r} is not served here"))
            return
        if env.kind == "call":
            env.reply_to = frm
        self.inflight[key] = (frm, sid)
        self._ids[env.id] += 1
        if env.kind != "call" and DEAD_ERROR_HEADER in env.headers:
            start_eagerly(self._bury_unrun(env), self.t.tasks)
            return
        if served.running >= served.prefetch:
            served.held.append((env, frm, sid, codec))
            return
        self.start(served, env, codec)

    # -- running ----------------------------------------------------------------------------

    def start(self, served: Served, env: Envelope, codec: Codec) -> None:
        """Run ``env`` (received in ``codec``) through the service's handler."""
        served.running += 1
        self.t.directory.presence_soon()
        start_eagerly(self.run(served, XmppIncoming(self.t, served, env, codec)), self.t.tasks)

    async def run(self, served: Served, incoming: Incoming) -> None:
        """Call the handler; one that raises is logged and its message buried or dropped."""
        try:
            await served.handler(incoming)
        except Exception as exc:
            log.exception("%s: handler failed", self.t.jid)
            await incoming.reject(False, wire_error("remote", type(exc).__name__, str(exc)))

    def _release(self, key: str, env_id: str) -> tuple[str, str] | None:
        where = self.inflight.pop(key, None)
        if where is not None:
            self._ids[env_id] -= 1
            if self._ids[env_id] <= 0:
                del self._ids[env_id]
        return where

    def _remember(self, key: str, inner: str) -> None:
        self.done[key] = inner
        if len(self.done) > 20_000:
            self.done.popitem(last=False)

    def answer(self, call: Envelope, answer: Envelope, codec: Codec) -> None:
        """Send the answer to a call (to the newest copy's sender), in ``codec``: an
        ``item`` or ``beat`` in a message (:meth:`stream`), the final reply or error in
        the IQ result or error."""
        key = delivery_key(call)
        if answer.kind == "item" or answer.kind == "beat":
            self.stream(key, answer, codec)
            return
        to, sid = self.inflight.get(key, (call.reply_to, ""))
        try:
            data = self.t.encode(answer, codec)
        except ProtocolError as exc:
            data = codec.encode(call.fail(wire_error("protocol", "ProtocolError", str(exc))))
            answer = Envelope("error")
        inner = stanzas.env_element(data)
        if answer.kind == "reply":
            self._remember(key, inner)
            text = stanzas.result_iq(to, sid, inner)
        else:
            code = str((answer.error or {}).get("code", "remote"))
            text = stanzas.error_iq(to, sid, _CONDITION.get(code, "undefined-condition"),
                                    "cancel", inner=inner)
        self.t.send_xml(text)
        self._release(key, call.id)

    def stream(self, key: str, answer: Envelope, codec: Codec) -> None:
        """Send an ``item`` or ``beat`` of the streamed call ``key`` to its caller's full
        JID, in a headline message on the same stream as (so before) the final IQ answer.

        ProtocolError when it is above ``max_size`` (nothing sent).  Dropped when the call
        was answered already; lost (as any stanza) while we are offline — the caller,
        seeing our presence go, fails the call ``unreachable``."""
        data = self.t.encode(answer, codec)
        where = self.inflight.get(key)
        if where is not None:
            self.t.send_xml(stanzas.answer_message(where[0], data))

    async def settle(self, served: Served, env: Envelope, requeue: bool | None,
                     error: dict[str, Any] | None = None) -> None:
        """Acknowledge (``requeue`` None), hand back (True) or bury/drop (False) ``env``."""
        key = delivery_key(env)
        try:
            if key not in self.inflight:
                return                          # a call already answered
            text = ""
            if requeue is False and env.kind == "task":
                try:
                    if not await self.t.dead.bury(env, error):
                        text = "rejected; the server would not keep it (see the node's log)"
                except ConnectionError as exc:     # its sender re-sends it: we are offline
                    log.warning("%s: could not bury task %s (%s); its sender keeps it",
                                self.t.jid, env.id, exc)
                    self._release(key, env.id)
                    return
            elif requeue is False and env.kind == "cast":
                log.warning("%s: dropped cast %s.%s (%s): %s", self.t.jid, env.service,
                            env.method, env.id, _describe(error))
            where = self._release(key, env.id)
            if where is None:
                return
            to, sid = where
            if requeue:
                self.t.send_xml(stanzas.error_iq(to, sid, "resource-constraint", "wait",
                                                 _describe(error) or "requeued"))
            elif text:
                self.t.send_xml(stanzas.error_iq(to, sid, "not-acceptable", "cancel", text))
            else:
                self._remember(key, "")
                self.t.send_xml(stanzas.result_iq(to, sid))
        finally:
            self.finish(served)

    async def _bury_unrun(self, env: Envelope) -> None:
        try:
            error = json.loads(env.headers.get(DEAD_ERROR_HEADER, ""))
        except ValueError:
            error = None
        if not isinstance(error, dict):
            error = wire_error("remote", "WorkerLost", "its worker vanished holding it")
        env.kind = "task"
        key = delivery_key(env)
        try:
            buried = await self.t.dead.bury(env, error)
        except ConnectionError:
            self._release(key, env.id)      # offline: its sender keeps it and sends it again
            return
        where = self._release(key, env.id)
        if where is not None:
            to, sid = where
            if buried:
                self._remember(key, "")
                self.t.send_xml(stanzas.result_iq(to, sid))
            else:
                self.t.send_xml(stanzas.error_iq(to, sid, "not-acceptable", "cancel",
                                                 "it could not be buried"))

    def finish(self, served: Served) -> None:
        """A message of ``served`` is done with: start the next one waiting."""
        served.running -= 1
        while served.held and served.running < served.prefetch and served.active:
            env, _frm, _sid, codec = served.held.popleft()
            self.start(served, env, codec)
        self.t.directory.presence_soon()

    # -- serving ----------------------------------------------------------------------------

    async def serve(self, info: ServiceInfo, handler: Handler, prefetch: int) -> None:
        """Become a replica of ``info.name``: announce it in the directory room."""
        self.served[info.name] = Served(info, handler, max(1, prefetch))
        await self.t.directory.announce()

    async def unserve(self, service: str) -> None:
        """Stop taking work for ``service``: held copies go back to their senders."""
        served = self.served.get(service)
        if served is None:
            return
        served.active = False
        while served.held:
            env, frm, sid, _codec = served.held.popleft()
            to, sid = self._release(delivery_key(env), env.id) or (frm, sid)
            self.t.send_xml(stanzas.error_iq(to, sid, "service-unavailable",
                                             text="service stopped"))
        self.t.directory.send_presence()


def _describe(error: dict[str, Any] | None) -> str:
    return f"{error.get('type', '')}: {error.get('message', '')}" if error else ""
