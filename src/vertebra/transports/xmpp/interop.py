"""What any XMPP client can ask a node: Jabber-RPC (XEP-0009) calls and disco (XEP-0030).

The XML-RPC value mapping is :mod:`.jabber_rpc`; this module routes a ``methodCall`` to a
served ``@rpc`` method and describes the node for disco#info and disco#items.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

from ...eager import start_eagerly
from ...wire.envelope import Envelope
from . import jabber_rpc, stanzas
from .incoming import RpcIncoming
from .stanzas import NS_ENV, NS_RPC

if TYPE_CHECKING:
    from .serving import Serving

__all__ = ["bad_arguments", "disco_info", "disco_items", "on_rpc"]


def on_rpc(serving: Serving, query: ET.Element, frm: str, sid: str) -> None:
    """A Jabber-RPC ``methodCall``: run it like a call, answer in XML-RPC."""
    t = serving.t
    if not serving.allowed(frm):
        t.stats["forbidden"] += 1
        t.send_xml(stanzas.error_iq(frm, sid, "forbidden", "auth"))
        return
    try:
        name, args = jabber_rpc.parse_call(query)
    except (jabber_rpc.RpcError, ValueError) as exc:
        t.stats["malformed"] += 1
        t.send_xml(stanzas.error_iq(frm, sid, "bad-request", "modify", str(exc)))
        return
    service, _, method = name.rpartition(".")
    candidates = [s for s in serving.served.values() if s.active and
                  (not service or s.info.name == service)]
    served = next((s for s in candidates if (m := s.info.method(method)) is not None
                   and m.kind == "rpc"), None)
    if served is None:
        t.send_xml(stanzas.result_iq(frm, sid, jabber_rpc.fault(404, f"no method {name!r} here")))
        return
    signature = m.signature if (m := served.info.method(method)) is not None else ""
    if not jabber_rpc.fits(signature, len(args)):
        t.send_xml(stanzas.result_iq(frm, sid, bad_arguments(f"{served.info.name}.{method}",
                                                             signature, len(args))))
        return
    env = Envelope("call", service=served.info.name, method=method, args=args,
                   reply_to=frm, deadline=time.time() + 60)
    served.running += 1
    start_eagerly(serving.run(served, RpcIncoming(t, served, env, frm, sid)), t.tasks)


def bad_arguments(name: str, signature: str, count: int) -> str:
    """The fault 400 for ``count`` arguments that cannot bind to ``name`` + ``signature``."""
    return jabber_rpc.fault(400, f"TypeError: {name}{signature} cannot take {count} "
                                 f"positional argument(s)")


def disco_info(name: str = "vertebra") -> str:
    """The disco#info query: identity automation/rpc and the features answered."""
    feats = [stanzas.NS_DISCO_INFO, stanzas.NS_DISCO_ITEMS, NS_RPC, NS_ENV, stanzas.NS_PING]
    body = "".join(f"<feature var='{f}'/>" for f in feats)
    return (f"<query xmlns='{stanzas.NS_DISCO_INFO}'><identity category='automation' "
            f"type='rpc' name={quoteattr(name)}/>{body}</query>")


def disco_items(serving: Serving) -> str:
    """The disco#items query: one item per served ``service.method``."""
    jid = escape(serving.t.jid)
    items = [f"<item jid='{jid}' node='{escape(s.info.name)}.{escape(m.name)}' "
             f"name='{escape(m.kind)}'/>"
             for s in serving.served.values() if s.active for m in s.info.methods]
    return f"<query xmlns='{stanzas.NS_DISCO_ITEMS}'>{''.join(items)}</query>"
