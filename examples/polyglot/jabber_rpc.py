"""A stock Jabber-RPC (XEP-0009) client, slixmpp's own xep_0009 plugin: no vertebra import,
nothing joined.  It knows one address, the service's stable JID SERVICE@GATEWAY
(docs/protocol/xmpp.md, "Addresses"), and calls methods there.

    python examples/polyglot/jabber_rpc.py --url CLIENT_URL --jid greeter@nodes.localhost \\
        --node-url NODE_URL                      # starts examples/hello.py's greeter first
    python examples/polyglot/jabber_rpc.py --url CLIENT_URL --jid calc@nodes.localhost \\
        --call add 2 3 --call add 1 --call nosuch

CLIENT_URL names this client's account, e.g.
xmpp://alice:pw@127.0.0.1:5222?domain=localhost&tls=0 (only user, password, host, port,
domain and tls are read).  NODE_URL is a vertebra URL that lets the node hold the gateway,
e.g. xmpp://greeter:pw@127.0.0.1:5222?domain=localhost&tls=0&muc=muc.localhost&room=dir
&gateway=nodes.localhost&gateway_secret=SECRET&gateway_port=5347.  Arguments of --call are
JSON (2, "x", [1,2]), else plain strings.  Output, one line per call:
``add(2, 3) -> 5`` or ``add(1) -> fault 400: TypeError: ...``.
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
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0009.binding import py2xml, xml2fault, xml2py

HELLO = pathlib.Path(__file__).resolve().parent.parent / "hello.py"
GREETER_DEMO = [["hello", "slixmpp"], ["divide", "1", "0"], ["divide", "1"], ["nosuch"]]


class RpcClient(slixmpp.ClientXMPP):
    """A plain client session with the XEP-0009 plugin."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        tls = query.get("tls", "1") != "0"
        domain = query.get("domain", parts.hostname or "")
        super().__init__(f"{parts.username}@{domain}/jabber-rpc", parts.password or "",
                         plugin_config={"feature_mechanisms": {"unencrypted_plain": not tls}})
        self.enable_starttls, self.enable_plaintext = tls, not tls     # tls=0: test servers only
        self.address = (parts.hostname or "127.0.0.1", parts.port or 5222)
        self.register_plugin("xep_0009")
        self.ready: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.ready.done() or self.ready.set_result(None))

    async def call(self, to: str, method: str, *params: Any) -> Any:
        """Call ``method`` at ``to``: the result, or RuntimeError("fault CODE: TEXT")."""
        iq = self.plugin["xep_0009"].make_iq_method_call(to, method, py2xml(*params))
        response = await iq.send(timeout=10)
        answer = response["rpc_query"]["method_response"]
        if answer.xml.find("{jabber:iq:rpc}fault") is not None:
            fault = xml2fault(answer["fault"])
            raise RuntimeError(f"fault {fault['code']}: {fault['string']}")
        return xml2py(answer["params"])[0]

    async def call_retrying(self, to: str, method: str, *params: Any, patience: float = 30.0) -> Any:
        """Like call, but an IQ error of type "wait" (no node holds the gateway yet, or the
        service has no replica for a moment) is tried again, for up to ``patience`` s."""
        loop = asyncio.get_running_loop()
        end = loop.time() + patience
        while True:
            try:
                return await self.call(to, method, *params)
            except IqError as exc:
                if exc.iq["error"]["type"] != "wait" or loop.time() > end:
                    raise
            except IqTimeout:
                if loop.time() > end:
                    raise
            await asyncio.sleep(0.2)


def parse(arg: str) -> Any:
    try:
        return json.loads(arg)
    except ValueError:
        return arg


async def run(url: str, jid: str, calls: list[list[str]]) -> None:
    client = RpcClient(url)
    client.connect(*client.address)
    await asyncio.wait_for(client.ready, 30)
    for method, *raw in calls:
        params = [parse(a) for a in raw]
        shown = f"{method}({', '.join(json.dumps(p) for p in params)})"
        try:
            print(f"{shown} -> {json.dumps(await client.call_retrying(jid, method, *params))}")
        except RuntimeError as exc:
            print(f"{shown} -> {exc}")
        except IqError as exc:
            error = exc.iq["error"]
            print(f"{shown} -> IQ error {error['type']}/{error['condition']}: {error['text']}")
    await client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", required=True, help="this client's account, as an xmpp:// URL")
    parser.add_argument("--jid", required=True, help="the service's stable JID, SERVICE@GATEWAY")
    parser.add_argument("--node-url", help="start examples/hello.py's greeter node on this URL")
    parser.add_argument("--call", nargs="+", action="append", metavar=("METHOD", "ARG"),
                        help="a call to make (repeatable); default: the greeter demo")
    args = parser.parse_args()
    server = None if args.node_url is None else subprocess.Popen(
        [sys.executable, str(HELLO), "serve", "--url", args.node_url])
    try:
        asyncio.run(run(args.url, args.jid, args.call or GREETER_DEMO))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
