"""A call from slixmpp's own Jabber-RPC plugin (XEP-0009) to a vertebra node over XMPP:
no vertebra import.  The node is the "greeter" of examples/hello.py.

    python examples/polyglot/jabber_rpc.py --url CLIENT_URL --node-url NODE_URL
    python examples/polyglot/jabber_rpc.py --url CLIENT_URL --no-server   # a node serves

Both URLs are vertebra xmpp URLs for two accounts on your server, in the same directory
room, e.g. xmpp://alice:pw@127.0.0.1:5222?domain=localhost&tls=0&muc=muc.localhost&room=dir
(the node's with its own account, e.g. greeter:pw).  A vertebra node announces itself in
the room with a presence carrying <node xmlns='urn:vertebra:presence:1' jid='FULL JID'>
and the services it serves; the call goes to that full JID with methodName
"service.method".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import subprocess
import sys
import urllib.parse
from typing import Any

import slixmpp
from slixmpp.plugins.xep_0009.binding import py2xml, xml2fault, xml2py

HELLO = pathlib.Path(__file__).resolve().parent.parent / "hello.py"
NODE = "{urn:vertebra:presence:1}node"


class RpcClient(slixmpp.ClientXMPP):
    """Joins the directory room, finds a replica of ``service``, calls it."""

    def __init__(self, url: str, service: str) -> None:
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        domain = query.get("domain", parts.hostname or "")
        tls = query.get("tls", "1") != "0"
        super().__init__(f"{parts.username}@{domain}/jabber-rpc", parts.password or "",
                         plugin_config={"feature_mechanisms": {"unencrypted_plain": not tls}})
        self.enable_starttls, self.enable_plaintext = tls, not tls     # tls=0: test servers only
        self.address = (parts.hostname or "127.0.0.1", parts.port or 5222)
        self.room = f"{query['room']}@{query['muc']}"
        self.service = service
        self.replica: asyncio.Future[str] = asyncio.get_event_loop().create_future()
        for plugin in ("xep_0030", "xep_0045", "xep_0009"):
            self.register_plugin(plugin)
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("groupchat_presence", self.on_room_presence)

    async def on_start(self, _: Any) -> None:
        self.send_presence()
        self.plugin["xep_0045"].join_muc(self.room, f"rpc-{self.boundjid.resource}")

    def on_room_presence(self, presence: slixmpp.Presence) -> None:
        node = presence.xml.find(NODE)
        if node is None or self.replica.done() or presence["type"] == "unavailable":
            return
        services = json.loads(node.text or "[]")
        if any(s.get("name") == self.service for s in services):
            self.replica.set_result(node.get("jid", ""))

    async def call(self, to: str, method: str, *params: Any) -> Any:
        iq = self.plugin["xep_0009"].make_iq_method_call(to, method, py2xml(*params))
        response = await iq.send(timeout=10)
        answer = response["rpc_query"]["method_response"]
        if answer["fault"] is not None:
            fault = xml2fault(answer["fault"])
            raise RuntimeError(f"fault {fault['code']}: {fault['string']}")
        return xml2py(answer["params"])[0]


async def run(url: str) -> None:
    client = RpcClient(url, "greeter")
    client.connect(*client.address)
    to = await asyncio.wait_for(client.replica, 30)
    print(f"found greeter at {to}")
    print("greeter.hello ->", await client.call(to, "greeter.hello", "slixmpp"))
    for method, params in [("greeter.divide", (1, 0)), ("greeter.nosuch", ())]:
        try:
            await client.call(to, method, *params)
        except RuntimeError as exc:
            print(f"{method} -> {exc}")
    client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", required=True, help="this client's xmpp:// account URL")
    parser.add_argument("--node-url", help="start hello.py's node with this xmpp:// URL")
    parser.add_argument("--no-server", action="store_true", help="a greeter node already serves")
    args = parser.parse_args()
    if not (args.node_url or args.no_server):
        parser.error("give --node-url (to start the node) or --no-server")
    server = None if args.no_server else subprocess.Popen(
        [sys.executable, str(HELLO), "serve", "--url", args.node_url])
    try:
        asyncio.run(run(args.url))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
