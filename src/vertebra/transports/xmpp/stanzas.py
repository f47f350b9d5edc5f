"""Vertebra's stanzas, written as XML text (the fast path) and read from ElementTree.

Wire summary (docs/protocol/xmpp.md has the whole of it):

* ``<env xmlns='urn:vertebra:envelope:1'>BASE64</env>`` — one encoded envelope (JSON or
  msgpack bytes, base64) inside an ``<iq type='set'>`` (call/cast/task), its
  ``type='result'`` (reply, or empty = acknowledged) or ``type='error'`` answer, a
  ``<message type='headline'>`` from a node to its caller's full JID (an ``item`` or
  ``beat`` of a streamed call, before the final IQ answer), or a
  ``<message type='groupchat'>`` to the events room (event).
* ``<node xmlns='urn:vertebra:presence:1' jid='FULL' load='N'>JSON</node>`` in a MUC
  presence to the directory room: the services this connection serves and its load.
"""

from __future__ import annotations

import base64
import binascii
import json
import xml.etree.ElementTree as ET
from typing import Any
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "NS_ENV", "NS_PRESENCE", "NS_PUBSUB", "NS_RPC", "NS_STANZAS", "IqError", "answer_message",
    "env_of", "error_iq", "error_type", "is_answer_message", "node_of", "request_iq", "result_iq",
    "same_jid", "set_iq",
]

NS_ENV = "urn:vertebra:envelope:1"
NS_PRESENCE = "urn:vertebra:presence:1"
NS_RPC = "jabber:iq:rpc"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_DELAY = "urn:xmpp:delay"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PING = "urn:xmpp:ping"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"

_ENV_TAG = f"{{{NS_ENV}}}env"
_NODE_TAG = f"{{{NS_PRESENCE}}}node"


def env_element(data: bytes) -> str:
    """The ``<env/>`` element carrying ``data``."""
    return f"<env xmlns='{NS_ENV}'>{base64.b64encode(data).decode('ascii')}</env>"


def set_iq(to: str, sid: str, data: bytes) -> str:
    """An IQ set carrying an envelope."""
    return f"<iq type='set' to={quoteattr(to)} id={quoteattr(sid)}>{env_element(data)}</iq>"


def answer_message(to: str, data: bytes) -> str:
    """A message carrying an ``item`` or ``beat`` envelope to a caller's full JID.

    Type ``headline``: a server never stores it offline nor hands it to another resource
    when ``to`` is gone (RFC 6121 §8.5.3.2.1: it is dropped), and it is neither archived
    nor carbon-copied; on one stream it arrives before the IQ answer sent after it
    (RFC 6120 §10.1, in-order processing)."""
    return f"<message type='headline' to={quoteattr(to)}>{env_element(data)}</message>"


def is_answer_message(xml: ET.Element) -> bool:
    """Whether a received stanza is an :func:`answer_message`."""
    return (xml.tag == "{jabber:client}message" and xml.get("type") == "headline"
            and xml.find(_ENV_TAG) is not None)


def same_jid(a: str, b: str) -> bool:
    """Whether two full JIDs are the same (the bare part compared case-insensitively, as
    the server's normalisation of ASCII localparts and domains; the resource exactly)."""
    bare_a, _, res_a = a.partition("/")
    bare_b, _, res_b = b.partition("/")
    return res_a == res_b and bare_a.lower() == bare_b.lower()


def request_iq(kind: str, to: str, sid: str, body: str) -> str:
    """An IQ ``get`` or ``set`` with a payload (already XML); no ``to``: our own account."""
    dest = f" to={quoteattr(to)}" if to else ""
    return f"<iq type='{kind}'{dest} id={quoteattr(sid)}>{body}</iq>"


class IqError(Exception):
    """An IQ request was answered with an error: ``condition`` (RFC 6120) and ``text``."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


def _from(frm: str) -> str:
    return f" from={quoteattr(frm)}" if frm else ""


def result_iq(to: str, sid: str, inner: str = "", frm: str = "") -> str:
    """An IQ result, optionally with a payload (already XML); ``frm``: a component's own
    address (a client's ``from`` is set by its server)."""
    return f"<iq type='result'{_from(frm)} to={quoteattr(to)} id={quoteattr(sid)}>{inner}</iq>"


def error_iq(to: str, sid: str, condition: str, etype: str = "cancel", text: str = "",
             inner: str = "", frm: str = "") -> str:
    """An IQ error with an RFC 6120 condition and optional text and payload.

    Children in this order: the payload (``<env/>``), then ``<error/>``; receivers find
    them by name, never by position (docs/protocol/xmpp.md)."""
    txt = f"<text xmlns='{NS_STANZAS}'>{escape(text[:500])}</text>" if text else ""
    return (f"<iq type='error'{_from(frm)} to={quoteattr(to)} id={quoteattr(sid)}>{inner}"
            f"<error type='{etype}'><{condition} xmlns='{NS_STANZAS}'/>{txt}</error></iq>")


def env_of(xml: ET.Element) -> bytes | None:
    """The envelope bytes in a stanza's ``<env/>`` child; None when there is none.

    Raises ValueError when the element is there but is not base64."""
    el = xml.find(_ENV_TAG)
    if el is None:
        return None
    try:
        return base64.b64decode((el.text or "").strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"<env/> is not base64: {exc}") from exc


def _error_el(xml: ET.Element) -> ET.Element | None:
    for child in xml:
        if child.tag.rpartition("}")[2] == "error" and child.tag.startswith(
                ("{jabber:client}", "{jabber:component:accept}")):
            return child
    return None


def error_type(xml: ET.Element) -> str:
    """The ``type`` of an error stanza's ``<error/>`` ("cancel" when absent)."""
    err = _error_el(xml)
    return (err.get("type") if err is not None else None) or "cancel"


def error_condition(xml: ET.Element) -> str:
    """The defined condition of an error stanza ("" when absent)."""
    err = _error_el(xml)
    if err is None:
        return ""
    for child in err:
        if child.tag.startswith(f"{{{NS_STANZAS}}}") and not child.tag.endswith("}text"):
            return child.tag.split("}", 1)[1]
    return ""


def error_text(xml: ET.Element) -> str:
    """The ``<text/>`` of an error stanza ("" when absent)."""
    err = _error_el(xml)
    el = err.find(f"{{{NS_STANZAS}}}text") if err is not None else None
    return (el.text or "") if el is not None else ""


def presence_node(full: str, load: int, services: list[dict[str, Any]], gateway: str = "") -> str:
    """The ``<node/>`` presence extension announcing ``services`` and ``load`` (and the
    gateway domain this bus holds, if any)."""
    body = escape(json.dumps(services, separators=(",", ":")))
    gw = f" gateway={quoteattr(gateway)}" if gateway else ""
    return f"<node xmlns='{NS_PRESENCE}' jid={quoteattr(full)} load='{load}'{gw}>{body}</node>"


def node_of(xml: ET.Element) -> tuple[str, int, list[dict[str, Any]], str] | None:
    """(jid, load, services, gateway) from a presence's ``<node/>``; None if absent or
    unreadable."""
    el = xml.find(_NODE_TAG)
    if el is None:
        return None
    try:
        services = json.loads(el.text or "[]")
        load = int(el.get("load", "0"))
    except ValueError:
        return None
    jid = el.get("jid", "")
    if not jid or not isinstance(services, list):
        return None
    return jid, load, [s for s in services if isinstance(s, dict)], el.get("gateway", "")
