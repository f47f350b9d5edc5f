"""A vertebra client in plain slixmpp (and the msgpack library): no vertebra import, only
docs/PROTOCOL.md and docs/protocol/xmpp.md.  It joins nothing: it sends envelopes to the
service's stable JID SERVICE@GATEWAY and reads the answers, in JSON or msgpack.

    python examples/polyglot/xmpp_client.py --url CLIENT_URL --jid calc@nodes.localhost \\
        --codec msgpack --call add 2 3 --call add 1 --task work job-1

CLIENT_URL names this client's account, e.g.
xmpp://alice:pw@127.0.0.1:5222?domain=localhost&tls=0 (only user, password, host, port,
domain and tls are read).  Arguments are JSON (2, "x", [1,2]), else plain strings.  Output,
one line per message: ``add(2, 3) -> 5 [msgpack]``, ``add(1) -> error remote TypeError:
... [msgpack]``, ``work("job-1") -> acknowledged``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any

import msgpack
import slixmpp
from slixmpp.exceptions import IqError

NS_ENV = "urn:vertebra:envelope:1"      # protocol/xmpp.md: the one payload namespace


# -- PROTOCOL.md §3: the two codecs -------------------------------------------------------

def to_json(value: Any) -> Any:
    """Values to JSON with tags: bytes -> {"$bytes": base64}, a one-key "$" map wrapped."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        out = {k: to_json(v) for k, v in value.items()}
        return {"$map": out} if len(out) == 1 and next(iter(out)).startswith("$") else out
    return value


def from_json(value: Any) -> Any:
    """JSON tags back to values."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and "$bytes" in value:
            return base64.b64decode(value["$bytes"], validate=True)
        if len(value) == 1 and "$map" in value:
            return {k: from_json(v) for k, v in value["$map"].items()}
        return {k: from_json(v) for k, v in value.items()}
    return value


def encode(env: dict[str, Any], codec: str) -> bytes:
    return msgpack.packb(env) if codec == "msgpack" else json.dumps(to_json(env)).encode()


def decode(data: bytes) -> tuple[dict[str, Any], str]:
    """An envelope and its codec, told apart by the first byte."""
    if data.lstrip()[:1] == b"{":
        return from_json(json.loads(data)), "json"
    return msgpack.unpackb(data), "msgpack"


# -- protocol/xmpp.md: an envelope in an IQ set; the answer in the IQ result or error -------

class Client(slixmpp.ClientXMPP):
    """A plain client session that sends envelopes in IQs."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        tls = query.get("tls", "1") != "0"
        domain = query.get("domain", parts.hostname or "")
        super().__init__(f"{parts.username}@{domain}/polyglot", parts.password or "",
                         plugin_config={"feature_mechanisms": {"unencrypted_plain": not tls}})
        self.enable_starttls, self.enable_plaintext = tls, not tls     # tls=0: test servers only
        self.address = (parts.hostname or "127.0.0.1", parts.port or 5222)
        self.ready: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.ready.done() or self.ready.set_result(None))

    async def send_envelope(self, to: str, env: dict[str, Any], codec: str) -> str:
        """One call, cast or task; what the answer says, as a line of text."""
        iq = self.make_iq_set(ito=to)
        iq.append(ET.fromstring(f"<env xmlns='{NS_ENV}'>"
                                f"{base64.b64encode(encode(env, codec)).decode()}</env>"))
        for _ in range(150):            # a "wait" error: retry (the gateway or a replica is
            try:                        # coming back); anything else is the answer
                answer = await iq.send(timeout=10)
                break
            except IqError as exc:
                answer = exc.iq
                if exc.iq["error"]["type"] != "wait" or exc.iq.xml.find(f"{{{NS_ENV}}}env") is not None:
                    break
                await asyncio.sleep(0.2)
                iq["id"] = self.new_id()
        el = answer.xml.find(f"{{{NS_ENV}}}env")
        if el is None:                  # no envelope: an acknowledgement, or an XMPP error
            if answer["type"] == "result":
                return "acknowledged"
            error = answer["error"]
            return f"IQ error {error['type']}/{error['condition']}: {error['text']}"
        reply, answer_codec = decode(base64.b64decode(el.text or ""))
        if reply["kind"] == "reply":
            return f"{json.dumps(to_json(reply['result']))} [{answer_codec}]"
        err = reply["error"]
        return f"error {err['code']} {err['type']}: {err['message']} [{answer_codec}]"


def parse(arg: str) -> Any:
    try:
        return json.loads(arg)
    except ValueError:
        return arg


async def run(url: str, jid: str, codec: str, messages: list[tuple[str, list[str]]]) -> None:
    client = Client(url)
    client.connect(*client.address)
    await asyncio.wait_for(client.ready, 30)
    service = jid.split("@", 1)[0]      # SERVICE@GATEWAY
    for kind, (method, *raw) in messages:
        args = [parse(a) for a in raw]
        env = {"v": 1, "id": os.urandom(8).hex(), "kind": kind, "service": service,
               "method": method, "args": args}
        shown = f"{method}({', '.join(json.dumps(to_json(a)) for a in args)})"
        print(f"{shown} -> {await client.send_envelope(jid, env, codec)}")
    await client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", required=True, help="this client's account, as an xmpp:// URL")
    parser.add_argument("--jid", required=True, help="the service's stable JID, SERVICE@GATEWAY")
    parser.add_argument("--codec", choices=["json", "msgpack"], default="json")
    parser.add_argument("--call", nargs="+", action="append", default=[], metavar=("METHOD", "ARG"))
    parser.add_argument("--task", nargs="+", action="append", default=[], metavar=("METHOD", "ARG"))
    args = parser.parse_args()
    messages = [("call", c) for c in args.call] + [("task", c) for c in args.task]
    asyncio.run(run(args.url, args.jid, args.codec, messages))


if __name__ == "__main__":
    main()
