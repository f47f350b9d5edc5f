"""An AsyncAPI 3.0 document of vertebra services: a catalogue other tools can read.

:func:`asyncapi_document` describes services — live ones from ``bus.nodes()``, or Node
classes from their code — as they travel on one or more transports (``url``):

* **servers**: one per broker (credentials never appear);
* **channels**, per transport: a service's calls and its casts/tasks where the transport
  puts them (AMQP ``vertebra.call.S`` and ``vertebra.task.S`` queues, the zmq hub's
  ROUTER, an XMPP replica's full JID, memory's in-process queue), the replies, and one
  channel per event pattern (AMQP's ``vertebra.events`` topic exchange, the hub's PUB/SUB,
  the XMPP events room);
* **operations**, from the services' point of view (``receive``): one per ``@rpc``
  method (with its reply), one for casting it, one per ``@task``, one per ``@event``;
* **messages**: whole envelopes (docs/PROTOCOL.md §2) whose ``args``/``kwargs``,
  ``result`` and event ``payload`` carry the JSON Schemas of the handlers' type hints
  (:mod:`vertebra.wire.schema`).

The frames, properties and stanzas around each envelope are in docs/protocol/*.md; each
channel's description names its section.  ``vertebra asyncapi`` writes this document.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .nodes.binding import Binder, method_info
from .nodes.decorators import ENTRYPOINT_ATTR, Entrypoint
from .nodes.node import Node
from .wire.envelope import PROTOCOL_VERSION
from .wire.info import MethodInfo, ServiceInfo
from .wire.schema import topic_regex

__all__ = ["ASYNCAPI_VERSION", "asyncapi_document", "service_info"]

ASYNCAPI_VERSION = "3.0.0"
"""The AsyncAPI version of the documents made here."""

Describable = ServiceInfo | Node | type[Node]


def service_info(node: Node | type[Node]) -> ServiceInfo:
    """What a Node class (or instance) would announce when served, without serving it."""
    cls = node if isinstance(node, type) else type(node)
    methods: list[MethodInfo] = []
    for attr in dir(cls):
        entry = getattr(getattr(cls, attr, None), ENTRYPOINT_ATTR, None)
        if not isinstance(entry, Entrypoint):
            continue
        func = getattr(node, attr)
        binder = Binder(func, skip=1 if isinstance(node, type) else 0)
        when = f"every {entry.every:g}s" if entry.every else f"cron {entry.cron}" if entry.cron else ""
        methods.append(method_info(binder, attr, entry.kind, inspect.getdoc(func) or "",
                                   entry.pattern or when))
    own_doc = cls.__dict__.get("__doc__")
    return ServiceInfo(cls.name, tuple(methods), inspect.cleandoc(own_doc) if own_doc else "")


# -- transports: servers and channel addresses --------------------------------------------

class _Transport:
    """Where one URL's transport carries a service's messages."""

    def __init__(self, key: str, url: str) -> None:
        parts = urlsplit(url)
        self.key = key
        self.scheme = "amqp" if parts.scheme == "amqps" else parts.scheme
        self.q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.hosts = [h.strip() for h in parts.netloc.rpartition("@")[2].split(",") if h.strip()]
        n = len(self.hosts)
        self.server_ids = [key] if n <= 1 else [f"{key}-{i + 1}" for i in range(n)]
        self.prefix = self.q.get("prefix", "")
        self.vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        domain = self.q.get("domain") or parts.hostname or ""
        self.muc = self.q.get("muc") or f"conference.{domain}"
        self.room = self.q.get("room") or "vertebra"
        self.protocol = parts.scheme

    def servers(self) -> dict[str, dict[str, Any]]:
        """The Server Objects of this transport."""
        info = {
            "amqp": ("0-9-1", "A RabbitMQ broker (AMQP 0-9-1); see docs/protocol/amqp.md."),
            "zmq": ("", "A vertebra hub: a ZeroMQ ROUTER at tcp://HOST (events through its "
                        "XSUB/XPUB, whose ports WELCOME tells); see docs/protocol/zmq.md."),
            "xmpp": ("", f"An XMPP server (RFC 6120) with a MUC service {self.muc}; "
                         "see docs/protocol/xmpp.md."),
            "memory": ("", "vertebra's in-process broker: reachable only from the same process."),
        }
        version, text = info.get(self.scheme, ("", f"a {self.scheme}:// transport"))
        hosts = self.hosts or ["in-process" if self.scheme == "memory" else "localhost"]
        out: dict[str, dict[str, Any]] = {}
        for sid, host in zip(self.server_ids, hosts, strict=False):
            server: dict[str, Any] = {"host": host, "protocol": self.protocol, "description": text}
            if version:
                server["protocolVersion"] = version
            if self.scheme == "amqp":
                server["pathname"] = "/" + self.vhost.lstrip("/") if self.vhost != "/" else "/"
            out[sid] = server
        return out

    def _queue(self, name: str, durable: bool) -> dict[str, Any]:
        return {"amqp": {"is": "queue", "bindingVersion": "0.3.0",
                         "queue": {"name": name, "durable": durable, "exclusive": False,
                                   "autoDelete": not durable, "vhost": self.vhost}}}

    def calls(self, service: str) -> dict[str, Any]:
        """The channel (without messages) a service's calls arrive on."""
        s = self.scheme
        if s == "amqp":
            name = f"{self.prefix}vertebra.call.{service}"
            return {"address": name, "bindings": self._queue(name, False), "description":
                    "Publish to the default exchange, routing key = this queue, mandatory, "
                    "reply_to=amq.rabbitmq.reply-to, correlation_id = the envelope's id "
                    "(docs/protocol/amqp.md §3)."}
        if s == "zmq":
            return {"address": service, "x-vertebra-zmq": {"socket": "ROUTER", "command": "CALL"},
                    "description": "From a DEALER to the hub's ROUTER: frames [0x01 0x03] "
                    f"[{service}] [message id] [envelope]; the answer comes back as ANSWER (0x24) "
                    "(docs/protocol/zmq.md)."}
        if s == "xmpp":
            return self._replica(service, "an IQ set; the answer is the IQ result or error")
        return {"address": service, "description": f"The in-process queue of {service}."}

    def tasks(self, service: str) -> dict[str, Any]:
        """The channel (without messages) a service's casts and tasks arrive on."""
        s = self.scheme
        if s == "amqp":
            name = f"{self.prefix}vertebra.task.{service}"
            return {"address": name, "bindings": self._queue(name, True),
                    "x-vertebra-dead-letters": f"{self.prefix}vertebra.dead.{service}",
                    "description": "Durable queue (declared with x-dead-letter-exchange "
                    f"{self.prefix}vertebra.dlx); publish persistent, confirmed; buried tasks "
                    f"wait in {self.prefix}vertebra.dead.{service} (docs/protocol/amqp.md §4)."}
        if s == "zmq":
            return {"address": service, "x-vertebra-zmq": {"socket": "ROUTER", "command": "CAST|TASK"},
                    "description": "From a DEALER to the hub's ROUTER: frames [0x01 0x04] (cast) or "
                    f"[0x01 0x05] (task) [{service}] [message id] [envelope]; the hub answers "
                    "QUEUED once it holds it (docs/protocol/zmq.md)."}
        if s == "xmpp":
            return self._replica(service, "an IQ set; an empty IQ result acknowledges it")
        return {"address": service, "description": f"The in-process queue of {service}."}

    def _replica(self, service: str, how: str) -> dict[str, Any]:
        return {"address": "{replica}", "description":
                f"<env xmlns='urn:vertebra:envelope:1'>base64(envelope)</env> in {how} "
                "(docs/protocol/xmpp.md).",
                "parameters": {"replica": {"description":
                    f"The full JID of a replica of {service}: an occupant of {self.room}@{self.muc} "
                    f"whose <node xmlns='urn:vertebra:presence:1'/> presence lists {service}."}}}

    def replies(self) -> dict[str, Any]:
        """The channel (without messages) answers to calls travel on."""
        text = {
            "amqp": "RabbitMQ direct reply-to: the node publishes to the call's reply_to property "
                    "with correlation_id = the call's id.",
            "zmq": "ANSWER (0x24) frames from the hub to the caller's DEALER.",
            "xmpp": "The IQ result (a reply envelope) or error (an error envelope) of the call's IQ.",
        }.get(self.scheme, "Back to the calling bus, in process.")
        address = "amq.rabbitmq.reply-to" if self.scheme == "amqp" else None
        return {"address": address, "description": text}

    def events(self, pattern: str) -> dict[str, Any]:
        """The channel (without messages) of the events that match ``pattern``."""
        s = self.scheme
        if s == "amqp":
            exchange = {"name": f"{self.prefix}vertebra.events", "type": "topic", "durable": True,
                        "autoDelete": False, "vhost": self.vhost}
            return {"address": pattern, "bindings": {"amqp": {"is": "routingKey", "exchange": exchange,
                                                              "bindingVersion": "0.3.0"}},
                    "description": "The topic exchange; a subscriber binds its own queue with this "
                    "pattern (docs/protocol/amqp.md §5)."}
        if s == "zmq":
            return {"address": pattern, "x-vertebra-zmq": {"socket": "XSUB/XPUB"},
                    "description": "PUB [topic] [envelope] to the hub's XSUB; SUB on its XPUB with "
                    "the pattern's literal prefix, then match the pattern (docs/protocol/zmq.md)."}
        if s == "xmpp":
            return {"address": f"{self.room}-events@{self.muc}", "x-vertebra-pattern": pattern,
                    "description": f"groupchat messages with <env/> in the events room; receivers "
                    f"keep the topics matching {pattern} (docs/protocol/xmpp.md)."}
        return {"address": pattern, "description": "Every in-process subscription that matches."}


# -- envelopes as JSON Schemas ------------------------------------------------------------

_HEADERS = {"type": "object", "additionalProperties": {"type": "string"}}
_ERROR = {"type": "object", "required": ["code", "type", "message"], "properties": {
    "code": {"type": "string", "enum": ["remote", "unreachable", "timeout", "protocol"]},
    "type": {"type": "string"}, "message": {"type": "string"}, "traceback": {"type": "string"},
    "node": {"type": "string"}}}
_ANY_PARAMS = {"properties": {"args": {"type": "array"}, "kwargs": {"type": "object"}}}


def _envelope(kind: str | list[str], props: dict[str, Any], required: list[str],
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    kinds = {"const": kind} if isinstance(kind, str) else {"enum": kind}
    out: dict[str, Any] = {"type": "object", "required": ["v", "id", "kind", *required], "properties": {
        "v": {"const": PROTOCOL_VERSION}, "id": {"type": "string", "minLength": 1},
        "kind": {"type": "string", **kinds}, **props, "reply_to": {"type": "string"},
        "deadline": {"type": "number"}, "headers": _HEADERS}}
    for key, value in (extra or {}).items():
        if key == "properties":
            out["properties"].update(value)
        elif key == "required":
            out["required"] += value
        elif key == "allOf":
            out["allOf"] = value
    return out


def _request(kind: str | list[str], service: str, m: MethodInfo) -> dict[str, Any]:
    props = {"service": {"const": service}, "method": {"const": m.name}}
    return _envelope(kind, props, ["service", "method"], m.params_schema or _ANY_PARAMS)


def _summary(m: MethodInfo) -> str:
    return m.doc.strip().splitlines()[0] if m.doc.strip() else f"{m.name}{m.signature}"


def _key(*parts: str) -> str:
    return re.sub(r"[^\w.\-]", "_", ".".join(parts))


# -- the document ---------------------------------------------------------------------

class _Builder:
    def __init__(self) -> None:
        self.servers: dict[str, Any] = {}
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {"vertebra.error": {
            "name": "error", "title": "error envelope", "summary": "A call failed (docs/PROTOCOL.md §5).",
            "payload": _envelope("error", {"re": {"type": "string"}, "error": _ERROR}, ["re", "error"]),
            "correlationId": {"location": "$message.payload#/re"}}}
        self._event_keys: dict[tuple[str, str], str] = {}

    def message(self, key: str, body: dict[str, Any]) -> str:
        self.messages[key] = body
        return key

    def channel(self, key: str, t: _Transport, body: dict[str, Any], *messages: str) -> dict[str, Any]:
        ch = self.channels.setdefault(key, {**body, "messages": {}, "servers": [
            {"$ref": f"#/servers/{sid}"} for sid in t.server_ids]})
        for m in messages:
            ch["messages"][m] = {"$ref": f"#/components/messages/{m}"}
        return {"$ref": f"#/channels/{key}"}

    def event_channel(self, t: _Transport, pattern: str) -> str:
        found = self._event_keys.get((t.key, pattern))
        if found is None:
            base = _key(t.key, "events", pattern.replace("*", "star").replace("#", "hash"))
            found, n = base, 1
            while found in self.channels:
                n += 1
                found = f"{base}-{n}"
            self._event_keys[(t.key, pattern)] = found
        return found

    def operation(self, key: str, channel: dict[str, Any], message: str, summary: str,
                  service: str, **more: Any) -> None:
        ch_key = channel["$ref"].rsplit("/", 1)[1]
        self.operations[key] = {"action": "receive", "channel": channel, "summary": summary,
                                "messages": [{"$ref": f"#/channels/{ch_key}/messages/{message}"}],
                                "tags": [{"name": service}], **more}

    def service(self, t: _Transport, info: ServiceInfo) -> None:
        for m in info.methods:
            if m.kind == "rpc":
                self._rpc(t, info.name, m)
            elif m.kind == "task":
                self._task(t, info.name, m)
            elif m.kind == "event":
                self._event(t, info.name, m)

    def _rpc(self, t: _Transport, s: str, m: MethodInfo) -> None:
        summary, op = _summary(m), _key(t.key, s, m.name)
        call = self.message(_key(s, m.name, "call"), {
            "name": "call", "title": f"{s}.{m.name} call", "summary": summary,
            "description": m.doc or summary, "payload": _request("call", s, m),
            "correlationId": {"location": "$message.payload#/id"}})
        result = {"re": {"type": "string"}, "result": m.result_schema or {}}
        reply = self.message(_key(s, m.name, "reply"), {
            "name": "reply", "title": f"{s}.{m.name} reply",
            "correlationId": {"location": "$message.payload#/re"},
            "payload": _envelope("reply", result, ["re", "result"])})
        replies = self.channel(_key(t.key, "replies"), t, t.replies(), reply, "vertebra.error")
        rk = replies["$ref"].rsplit("/", 1)[1]
        answers = [{"$ref": f"#/channels/{rk}/messages/{reply}"},
                   {"$ref": f"#/channels/{rk}/messages/vertebra.error"}]
        bindings = {"bindings": {"amqp": {"deliveryMode": 1, "mandatory": True, "ack": True,
                                          "bindingVersion": "0.3.0"}}} if t.scheme == "amqp" else {}
        self.operation(op, self.channel(_key(t.key, s, "calls"), t, t.calls(s), call), call, summary, s,
                       reply={"channel": replies, "messages": answers}, **bindings)
        cast = self.message(_key(s, m.name, "cast"), {
            "name": "cast", "title": f"{s}.{m.name} cast", "summary": f"{summary} (no answer)",
            "payload": _request("cast", s, m)})
        self.operation(_key(op, "cast"), self.channel(_key(t.key, s, "tasks"), t, t.tasks(s), cast),
                       cast, f"{summary} (fire and forget)", s, **_durable(t))

    def _task(self, t: _Transport, s: str, m: MethodInfo) -> None:
        summary = _summary(m)
        msg = self.message(_key(s, m.name, "task"), {
            "name": "task", "title": f"{s}.{m.name} task", "summary": summary,
            "description": m.doc or summary, "payload": _request(["task", "cast"], s, m)})
        self.operation(_key(t.key, s, m.name), self.channel(_key(t.key, s, "tasks"), t, t.tasks(s), msg),
                       msg, summary, s, **_durable(t))

    def _event(self, t: _Transport, s: str, m: MethodInfo) -> None:
        topic = {"type": "string", "pattern": topic_regex(m.pattern)}
        msg = self.message(_key(s, m.name, "event"), {
            "name": "event", "title": f"{m.pattern} event ({s}.{m.name})", "summary": _summary(m),
            "payload": _envelope("event", {"topic": topic, "payload": m.params_schema or {}},
                                 ["topic", "payload"])})
        channel = self.channel(self.event_channel(t, m.pattern), t, t.events(m.pattern), msg)
        self.operation(_key(t.key, s, m.name), channel, msg, f"{s}.{m.name}: {_summary(m)}", s)


def _durable(t: _Transport) -> dict[str, Any]:
    if t.scheme != "amqp":
        return {}
    return {"bindings": {"amqp": {"deliveryMode": 2, "ack": True, "bindingVersion": "0.3.0"}}}


def asyncapi_document(services: Iterable[Describable], url: str | Sequence[str] = "memory://", *,
                      title: str = "vertebra services", version: str = "1.0.0",
                      description: str = "") -> dict[str, Any]:
    """An AsyncAPI 3.0 document (a JSON-ready dict) of ``services`` on the transport(s) of
    ``url`` (one URL, or several: channels per transport).

    ``services`` are :class:`~vertebra.wire.info.ServiceInfo` (from ``bus.nodes()``),
    Node classes or Node instances, in any mix.  A method a node described without
    schemas (an older or non-Python node) gets open ``args``/``kwargs``/``result``.
    """
    infos = [s if isinstance(s, ServiceInfo) else service_info(s) for s in services]
    urls = [url] if isinstance(url, str) else list(url)
    b = _Builder()
    seen: dict[str, int] = {}
    for u in urls:
        scheme = urlsplit(u).scheme or "memory"
        seen[scheme] = seen.get(scheme, 0) + 1
        t = _Transport(scheme if seen[scheme] == 1 else f"{scheme}{seen[scheme]}", u)
        b.servers.update(t.servers())
        for info in infos:
            b.service(t, info)
    schedules = [{"service": i.name, "method": m.name, "schedule": m.pattern}
                 for i in infos for m in i.methods if m.kind == "schedule"]
    lines = [description] if description else []
    lines += [f"* **{i.name}**: {i.doc.splitlines()[0] if i.doc else '(no description)'}" for i in infos]
    doc: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": title, "version": version,
                 "description": "\n".join(lines) or "vertebra services",
                 "x-vertebra-protocol": PROTOCOL_VERSION},
        "defaultContentType": "application/json",
        "servers": b.servers, "channels": b.channels, "operations": b.operations,
        "components": {"messages": b.messages},
    }
    if schedules:
        doc["x-vertebra-schedules"] = schedules
    return doc
