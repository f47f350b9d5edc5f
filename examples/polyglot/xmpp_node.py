"""A vertebra node in plain slixmpp (and the msgpack library): no vertebra import, only
docs/PROTOCOL.md and docs/protocol/xmpp.md.  It serves the "shouter" service: it joins the
network's directory room with a presence announcing it, and answers the envelopes sent to
its full JID — directly by vertebra callers, or forwarded by the gateway from
shouter@GATEWAY (where stock Jabber-RPC clients reach it too: the gateway speaks XML-RPC,
this node only envelopes).

    python examples/polyglot/xmpp_node.py --url URL

URL: xmpp://user:password@host:port?domain=D&tls=0&muc=MUC&room=ROOM (tls=0: loopback
test servers only; muc defaults to conference.D, room to "vertebra").  Stop it with
SIGTERM or Ctrl-C.  Then, from anywhere: `vertebra call URL2 shouter.shout hello`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import msgpack
import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

NS_ENV = "urn:vertebra:envelope:1"
NS_PRESENCE = "urn:vertebra:presence:1"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
SERVICE = "shouter"


def shout(text: str) -> str:
    """Upper-case ``text``."""
    return text.upper() + "!"


def reverse(data: bytes) -> bytes:
    """Reverse a byte string."""
    return data[::-1]


METHODS: dict[str, tuple[Callable[..., Any], str]] = {
    "shout": (shout, "(text: str) -> str"), "reverse": (reverse, "(data: bytes) -> bytes")}
INFO = [{"name": SERVICE, "doc": "A node written in plain slixmpp.", "replicas": 1,
         "transport": "xmpp", "extra": {},
         "methods": [{"name": n, "kind": "rpc", "signature": sig, "doc": f.__doc__ or "",
                      "pattern": ""} for n, (f, sig) in METHODS.items()]}]


# -- PROTOCOL.md §3: the two codecs; the answer in the codec of the call -------------------

def from_json(value: Any) -> Any:
    """JSON tags to values ($bytes -> bytes, $map -> the map itself)."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and "$bytes" in value:
            return base64.b64decode(value["$bytes"], validate=True)
        if len(value) == 1 and "$map" in value:
            return {k: from_json(v) for k, v in value["$map"].items()}
        return {k: from_json(v) for k, v in value.items()}
    return value


def to_json(value: Any) -> Any:
    """Values to JSON with tags."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        out = {k: to_json(v) for k, v in value.items()}
        return {"$map": out} if len(out) == 1 and next(iter(out)).startswith("$") else out
    return value


def decode(data: bytes) -> tuple[Any, str]:
    """(envelope, codec), told apart by the first byte; ValueError if it is neither."""
    first = data.lstrip()[:1]
    if first == b"{":
        return from_json(json.loads(data)), "json"
    if first and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF)):
        return msgpack.unpackb(data), "msgpack"
    raise ValueError("not an envelope")


def encode(env: dict[str, Any], codec: str) -> str:
    """The ``<env/>`` element carrying ``env``."""
    data = msgpack.packb(env) if codec == "msgpack" else json.dumps(to_json(env)).encode()
    return f"<env xmlns='{NS_ENV}'>{base64.b64encode(data).decode()}</env>"


def error(code: str, type_: str, message: str) -> dict[str, str]:
    return {"code": code, "type": type_, "message": message, "traceback": ""}


def run(env: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Run a call, cast or task: (IQ condition or "" for success, answer envelope)."""
    answer: dict[str, Any] = {"v": 1, "id": os.urandom(8).hex(), "re": env["id"]}
    if env.get("deadline") is not None and env["deadline"] < time.time():
        return "remote-server-timeout", {**answer, "kind": "error", "error": error(
            "timeout", "CallTimeout", "deadline passed before it started")}
    entry = METHODS.get(env.get("method", ""))
    if entry is None:
        return "item-not-found", {**answer, "kind": "error", "error": error(
            "unreachable", "Unreachable", f"no method {env.get('method')!r}")}
    try:
        result = entry[0](*env.get("args", []), **env.get("kwargs", {}))
    except Exception as exc:      # TypeError for wrong arguments, anything the method raises
        return "undefined-condition", {**answer, "kind": "error", "error": error(
            "remote", type(exc).__name__, str(exc))}
    return "", {**answer, "kind": "reply", "result": result}


class ShouterNode(slixmpp.ClientXMPP):
    """Serves SERVICE: presence in the directory room, envelopes in IQ sets."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        q = dict(urllib.parse.parse_qsl(parts.query))
        tls = q.get("tls", "1") != "0"
        domain = q.get("domain", parts.hostname or "")
        resource = "py-" + os.urandom(4).hex()
        super().__init__(f"{parts.username}@{domain}/{resource}", parts.password or "",
                         plugin_config={"feature_mechanisms": {"unencrypted_plain": not tls}})
        self.enable_starttls, self.enable_plaintext = tls, not tls     # tls=0: test servers only
        self.address = (parts.hostname or "127.0.0.1", parts.port or 5222)
        self.room = f"{q.get('room', 'vertebra')}@{q.get('muc', 'conference.' + domain)}"
        self.nick = f"{parts.username}.{resource}"                      # xmpp.md: user.resource
        self.register_plugin("xep_0199")                                # answer pings
        self.add_event_handler("session_start", self.on_start)
        self.register_handler(Callback("envelope", MatchXPath(
            f"{{jabber:client}}iq/{{{NS_ENV}}}env"), self.on_envelope))

    def on_start(self, _: Any) -> None:
        self.send_raw("<presence/>")
        node = (f"<node xmlns='{NS_PRESENCE}' jid={quoteattr(str(self.boundjid))} load='0'>"
                f"{escape(json.dumps(INFO))}</node>")
        self.send_raw(f"<presence to={quoteattr(self.room + '/' + self.nick)}><x xmlns="
                      f"'http://jabber.org/protocol/muc'><history maxstanzas='0'/></x>{node}</presence>")
        print(f"serving {SERVICE} as {self.boundjid} in {self.room}", file=sys.stderr, flush=True)

    def answer(self, iq: Any, condition: str = "", etype: str = "cancel", inner: str = "") -> None:
        to, sid = quoteattr(str(iq["from"])), quoteattr(iq["id"])
        if not condition:
            self.send_raw(f"<iq type='result' to={to} id={sid}>{inner}</iq>")
        else:
            self.send_raw(f"<iq type='error' to={to} id={sid}>{inner}<error type='{etype}'>"
                          f"<{condition} xmlns='{NS_STANZAS}'/></error></iq>")

    def on_envelope(self, iq: Any) -> None:
        if iq["type"] != "set":
            return self.answer(iq, "bad-request", "modify")
        try:
            text = iq.xml.find(f"{{{NS_ENV}}}env").text or ""
            env, codec = decode(base64.b64decode(text, validate=True))
        except (ValueError, binascii.Error, msgpack.UnpackException):
            return self.answer(iq, "bad-request", "modify")
        if not isinstance(env, dict) or env.get("v") != 1:
            return self.answer(iq, "feature-not-implemented", "modify")
        if env.get("kind") not in ("call", "cast", "task") or not env.get("id"):
            return self.answer(iq, "bad-request", "modify")
        if env.get("service") != SERVICE:
            return self.answer(iq, "service-unavailable")
        condition, reply = run(env)
        if env["kind"] == "call":
            return self.answer(iq, condition, inner=encode(reply, codec))
        return self.answer(iq)      # a cast or task: the empty result acknowledges it

    async def leave(self) -> None:
        self.send_raw(f"<presence type='unavailable' to={quoteattr(self.room + '/' + self.nick)}/>")
        await self.disconnect()


async def main_async(url: str) -> None:
    node = ShouterNode(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node.connect(*node.address)
    await stop.wait()
    await node.leave()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", required=True, help="this node's account, as an xmpp:// URL")
    asyncio.run(main_async(parser.parse_args().url))


if __name__ == "__main__":
    main()
