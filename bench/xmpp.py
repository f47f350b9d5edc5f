"""vertebra on XMPP against raw slixmpp, side by side in one run, through one private Prosody.

    python bench/xmpp.py [--n 2000]

A private Prosody (tests/servers/xmpp.py: no mod_limits, Nagle off) is started in a
temporary directory.  Servers run in their own processes (this script re-invoked with
--serve-*), clients in this one.  Every echo carries a 100-byte string.  Measured:

* raw slixmpp IQ round trips client -> client, 1 and 100 in flight (server: slixmpp
  answering ``<echo xmlns='urn:bench'/>`` IQs)
* raw slixmpp MUC groupchat messages, one sender to one receiver (events' raw counterpart)
* vertebra: sync calls (p50/p99), pipelined calls (100 in flight), events received/s;
  each with its ratio to the raw counterpart (target >= 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

PAYLOAD = "x" * 100
NS = "urn:bench"


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


class Row:
    """One line of the table."""

    def __init__(self, name: str, rate: float, p50: float | None = None,
                 p99: float | None = None) -> None:
        self.name, self.rate, self.p50, self.p99 = name, rate, p50, p99


def spawn(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], env=env)


async def raw_client(port: int, user: str, resource: str) -> Any:
    import slixmpp
    c = slixmpp.ClientXMPP(f"{user}@localhost/{resource}", "pw",
                           plugin_config={"feature_mechanisms": {"unencrypted_plain": True}})
    c.enable_starttls = c.enable_direct_tls = False
    c.enable_plaintext = True
    ready = asyncio.get_running_loop().create_future()
    c.add_event_handler("session_start", lambda _e: ready.done() or ready.set_result(None))
    c.connect("127.0.0.1", port)
    await asyncio.wait_for(ready, 20)
    return c


# -- servers (separate processes) ---------------------------------------------------------

def serve_raw(port: int) -> None:
    from slixmpp.xmlstream.handler import Callback
    from slixmpp.xmlstream.matcher import MatchXPath

    async def main() -> None:
        c = await raw_client(port, "rawsrv", "srv")

        def answer(iq: Any) -> None:
            reply = iq.reply(clear=False)
            reply.send()

        c.register_handler(Callback("echo", MatchXPath(f"{{jabber:client}}iq/{{{NS}}}echo"), answer))
        await asyncio.sleep(3600)

    asyncio.run(main())


def serve_vertebra(url: str) -> None:
    import vertebra
    from vertebra import Node, rpc

    class Echo(Node):
        name = "echo"

        @rpc
        async def echo(self, value: Any) -> Any:
            return value

    vertebra.serve(Echo(), url=url)


# -- raw slixmpp ------------------------------------------------------------------------------

async def raw_iq(port: int, n: int, inflight: int) -> Row:
    c = await raw_client(port, "rawcli", f"c{inflight}")
    to = "rawsrv@localhost/srv"

    async def one() -> None:
        iq = c.make_iq_set(ito=to)
        iq.append(ET.fromstring(f"<echo xmlns='{NS}'>{PAYLOAD}</echo>"))
        await iq.send(timeout=30)

    for _ in range(50):
        await one()
    lat: list[float] = []
    left = [n]

    async def lane() -> None:
        while left[0] > 0:
            left[0] -= 1
            t = time.perf_counter()
            await one()
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(inflight)))
    el = time.perf_counter() - t0
    c.disconnect()
    if inflight == 1:
        return Row("raw slixmpp IQ, 1 in flight", n / el, pct(lat, .5), pct(lat, .99))
    return Row(f"raw slixmpp IQ, {inflight} in flight", n / el)


async def raw_muc(port: int, n: int) -> Row:
    room = "bench-raw@muc.localhost"
    a = await raw_client(port, "rawcli", "muc-a")
    b = await raw_client(port, "rawsrv", "muc-b")
    got = [0]
    done = asyncio.get_running_loop().create_future()

    def on_msg(msg: Any) -> None:
        if msg["type"] == "groupchat" and msg["body"] == PAYLOAD:
            got[0] += 1
            if got[0] == n and not done.done():
                done.set_result(None)

    b.add_event_handler("message", on_msg)
    for c, nick in ((a, "a"), (b, "b")):
        c.send_raw(f"<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'>"
                   "<history maxstanzas='0'/></x></presence>")
    await asyncio.sleep(0.5)
    t0 = time.perf_counter()
    for i in range(n):
        a.send_raw(f"<message type='groupchat' to='{room}'><body>{PAYLOAD}</body></message>")
        if i % 100 == 99:
            await asyncio.sleep(0)
    await asyncio.wait_for(done, 60)
    el = time.perf_counter() - t0
    a.disconnect()
    b.disconnect()
    return Row("raw slixmpp MUC messages received", n / el)


# -- vertebra ---------------------------------------------------------------------------------

def vertebra_sync(url: str, n: int) -> Row:
    import vertebra
    lat = []
    with vertebra.connect(url) as bus:
        echo = bus.proxy("echo", timeout=10)
        for _ in range(200):
            try:
                echo.echo(PAYLOAD)
                break
            except vertebra.Unreachable:
                time.sleep(0.05)
        for _ in range(50):
            echo.echo(PAYLOAD)
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            echo.echo(PAYLOAD)
            lat.append(time.perf_counter() - t)
        el = time.perf_counter() - t0
    return Row("vertebra sync calls", n / el, pct(lat, .5), pct(lat, .99))


async def vertebra_pipelined(url: str, n: int, inflight: int) -> Row:
    import vertebra
    async with vertebra.connect_async(url) as bus:
        echo = bus.proxy("echo", timeout=30)
        await echo.echo(PAYLOAD)
        left = [n]

        async def lane() -> None:
            while left[0] > 0:
                left[0] -= 1
                await echo.echo(PAYLOAD)

        t0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(inflight)))
        el = time.perf_counter() - t0
    return Row(f"vertebra calls, {inflight} in flight", n / el)


async def vertebra_events(url_pub: str, url_sub: str, n: int) -> Row:
    import vertebra
    async with vertebra.connect_async(url_sub) as sub, vertebra.connect_async(url_pub) as pub:
        got = [0]
        done = asyncio.get_running_loop().create_future()

        async def on_event(topic: str, payload: Any) -> None:
            got[0] += 1
            if got[0] == n and not done.done():
                done.set_result(None)

        await sub.subscribe("bench.*", on_event)
        pub.publish("bench.warm", PAYLOAD)
        await pub.flush(10)
        await asyncio.sleep(0.5)
        got[0] = 0
        t0 = time.perf_counter()
        for i in range(n):
            pub.publish("bench.tick", PAYLOAD)
            if i % 100 == 99:
                await asyncio.sleep(0)
        await asyncio.wait_for(done, 60)
        el = time.perf_counter() - t0
    return Row("vertebra events received", n / el)


# -- main -------------------------------------------------------------------------------------

def fmt_us(x: float | None) -> str:
    return "" if x is None else f"{x * 1e6:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="round trips / events per figure")
    ap.add_argument("--serve-raw", type=int)
    ap.add_argument("--serve-vertebra")
    a = ap.parse_args()
    if a.serve_raw:
        serve_raw(a.serve_raw)
        return
    if a.serve_vertebra:
        serve_vertebra(a.serve_vertebra)
        return

    from tests.servers import xmpp as xmpp_servers
    with tempfile.TemporaryDirectory() as tmp, xmpp_servers.running(Path(tmp)) as server:
        for user in ("rawsrv", "rawcli"):
            server.register(user)
        url_node = server.url("echo", "bench")
        url_client = server.url("client", "bench")
        url_sub = server.url("sub", "bench")
        procs = [spawn("--serve-raw", str(server.port)), spawn("--serve-vertebra", url_node)]
        try:
            time.sleep(1.5)
            rows: list[Row] = []
            rows.append(asyncio.run(raw_iq(server.port, a.n, 1)))
            rows.append(asyncio.run(raw_iq(server.port, a.n, 100)))
            rows.append(asyncio.run(raw_muc(server.port, a.n)))
            rows.append(vertebra_sync(url_client, a.n))
            rows.append(asyncio.run(vertebra_pipelined(url_client, a.n, 100)))
            rows.append(asyncio.run(vertebra_events(url_client, url_sub, a.n)))
        finally:
            for p in procs:
                p.kill()
                p.wait()
    raw = {r.name: r for r in rows}
    ratio_of = {"vertebra sync calls": "raw slixmpp IQ, 1 in flight",
                "vertebra calls, 100 in flight": "raw slixmpp IQ, 100 in flight",
                "vertebra events received": "raw slixmpp MUC messages received"}
    print(f"\n{'':38} {'per s':>9} {'p50 us':>8} {'p99 us':>8} {'ratio':>6}")
    for r in rows:
        base = raw.get(ratio_of.get(r.name, ""))
        ratio = f"{r.rate / base.rate:.2f}" if base else ""
        print(f"{r.name:38} {r.rate:9,.0f} {fmt_us(r.p50):>8} {fmt_us(r.p99):>8} {ratio:>6}")
    print("\n(2 shared cores: figures are noisy; the target is ratio >= 0.7)")


if __name__ == "__main__":
    main()
