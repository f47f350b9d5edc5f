"""vertebra on AMQP against raw py-amqp, pika, kombu and Nameko, side by side in one run.

    python bench/amqp.py [--url amqp://guest:guest@127.0.0.1:5672/%2F] [--n 2000]
                         [--no-nameko] [--no-kombu]

Every echo carries a 100-byte string.  Servers run in their own processes (this script
re-invoked with --serve-*), clients in this one.  Measured:

* raw py-amqp RPC over direct reply-to, 1 and 100 in flight (server: raw py-amqp, manual ack)
* raw py-amqp publish: unconfirmed, and with confirms and a window of 100 unconfirmed,
  and with confirms one at a time (window 1: what kombu's ``confirm_publish`` does)
* the two ways py-amqp can meet asyncio, 1 in flight: the socket registered with the loop
  (what vertebra does) vs one I/O thread handing frames over with call_soon_threadsafe
* pika BlockingConnection RPC (against the raw server)
* kombu (a separate venv under /tmp): RPC-style echo against the raw server, a Producer
  publishing with reply_to direct reply-to and a Consumer on it, one in flight; Producer
  publishing unconfirmed, and with ``confirm_publish`` (each publish waits for its ack)
* Nameko's ClusterRpcProxy against a Nameko service (a separate venv under /tmp)
* vertebra: sync calls (p50/p99), pipelined calls (100 in flight), confirmed task
  publishing with 100 confirms outstanding to the one service (``send_window`` 400: the
  outbox gives one destination a quarter of its window); each with its ratio to the raw
  counterpart.

Nameko needs ``python -m venv /tmp/nameko-venv && /tmp/nameko-venv/bin/pip install nameko``
and kombu ``python -m venv /tmp/kombu-venv && /tmp/kombu-venv/bin/pip install kombu`` (both
done by this script when missing; say --no-nameko / --no-kombu to skip them).  Every row
that has a raw counterpart shows its rate over it; the vertebra sync row also shows its
rate over kombu's and Nameko's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

# This file is called amqp.py: keep its own directory off the path so that ``import amqp``
# finds py-amqp, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import amqp  # noqa: E402

PAYLOAD = "x" * 100
HERE = Path(__file__).resolve().parent
NAMEKO_VENV = Path("/tmp/nameko-venv")
KOMBU_VENV = Path("/tmp/kombu-venv")


# -- helpers -----------------------------------------------------------------------------

def hostport(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit
    p = urlsplit(url)
    return p.hostname or "127.0.0.1", p.port or 5672


def raw_conn(url: str) -> amqp.Connection:
    host, port = hostport(url)
    c = amqp.Connection(f"{host}:{port}", "guest", "guest")
    c.connect()
    return c


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


class Row:
    def __init__(self, name: str, rate: float, p50: float | None = None, p99: float | None = None,
                 note: str = "") -> None:
        self.name, self.rate, self.p50, self.p99, self.note = name, rate, p50, p99, note


def spawn(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], env=env)


def wait_consumer(url: str, queue: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    c = raw_conn(url)
    try:
        while time.monotonic() < deadline:
            ch = c.channel()
            try:
                if ch.queue_declare(queue, passive=True).consumer_count > 0:
                    return
            except amqp.exceptions.NotFound:
                pass
            time.sleep(0.05)
    finally:
        c.close()
    raise RuntimeError(f"no consumer on {queue}")


# -- servers (subprocesses) --------------------------------------------------------------

def serve_raw(url: str, queue: str) -> None:
    c = raw_conn(url)
    ch = c.channel()
    ch.queue_declare(queue, auto_delete=True)
    ch.basic_qos(0, 100, False)

    def on(msg: amqp.Message) -> None:
        p = msg.properties
        ch.basic_publish(amqp.Message(msg.body, correlation_id=p.get("correlation_id")),
                         exchange="", routing_key=p["reply_to"])
        ch.basic_ack(msg.delivery_info["delivery_tag"])

    ch.basic_consume(queue, callback=on)
    while True:
        c.drain_events()


def serve_vertebra(url: str) -> None:
    import vertebra
    from vertebra import Node, rpc, task

    class Echo(Node):
        name = "echo"

        @rpc
        async def echo(self, value: Any) -> Any:
            return value

        @task
        async def sink(self, value: Any) -> None:
            return None

    vertebra.serve(Echo(), url=url)


# -- raw py-amqp -------------------------------------------------------------------------

def raw_rpc(url: str, queue: str, n: int, inflight: int) -> Row:
    c = raw_conn(url)
    ch = c.channel()
    lat: list[float] = []
    sent: dict[str, float] = {}
    state = {"done": 0, "next": 0}

    def send() -> None:
        cid = str(state["next"])
        state["next"] += 1
        sent[cid] = time.perf_counter()
        ch.basic_publish(amqp.Message(PAYLOAD, correlation_id=cid, reply_to="amq.rabbitmq.reply-to"),
                         exchange="", routing_key=queue)

    def on(msg: amqp.Message) -> None:
        lat.append(time.perf_counter() - sent.pop(msg.properties["correlation_id"]))
        state["done"] += 1
        if state["next"] < n:
            send()

    ch.basic_consume("amq.rabbitmq.reply-to", no_ack=True, callback=on)
    t0 = time.perf_counter()
    for _ in range(min(inflight, n)):
        send()
    while state["done"] < n:
        c.drain_events()
    el = time.perf_counter() - t0
    c.close()
    return Row(f"raw py-amqp RPC, {inflight} in flight", n / el, pct(lat, .5), pct(lat, .99))


def raw_publish(url: str, n: int, window: int | None) -> Row:
    c = raw_conn(url)
    ch = c.channel()
    q = f"bench.pub.{uuid.uuid4().hex[:8]}"
    ch.queue_declare(q, durable=True)
    acked = {"n": 0}
    if window:
        ch.confirm_select()

        def on_ack(tag: int, multiple: bool) -> None:
            acked["n"] = tag if multiple else max(acked["n"], tag)   # good enough: tags in order
        ch.events["basic_ack"].add(on_ack)
    body = json.dumps({"v": 1, "kind": "task", "args": [PAYLOAD]})
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        ch.basic_publish(amqp.Message(body, delivery_mode=2), exchange="", routing_key=q)
        if window:
            while i - acked["n"] >= window:
                c.drain_events()
    while window and acked["n"] < n:
        c.drain_events()
    el = time.perf_counter() - t0
    ch.queue_delete(q)
    c.close()
    what = f"confirms, window {window}" if window else "no confirms"
    return Row(f"raw py-amqp publish, {what}", n / el)


# -- asyncio integration: socket on the loop vs an I/O thread ----------------------------

async def loop_reader_rpc(url: str, queue: str, n: int) -> Row:
    loop = asyncio.get_running_loop()
    c = raw_conn(url)
    ch = c.channel()
    fut: list[asyncio.Future[None]] = []

    def on(msg: amqp.Message) -> None:
        fut[0].set_result(None)

    ch.basic_consume("amq.rabbitmq.reply-to", no_ack=True, callback=on)

    def readable() -> None:
        while True:
            try:
                c.drain_events(timeout=0)
            except TimeoutError:
                return

    loop.add_reader(c.sock.fileno(), readable)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        fut[:] = [loop.create_future()]
        t = time.perf_counter()
        ch.basic_publish(amqp.Message(PAYLOAD, correlation_id=str(i), reply_to="amq.rabbitmq.reply-to"),
                         exchange="", routing_key=queue)
        await fut[0]
        lat.append(time.perf_counter() - t)
    el = time.perf_counter() - t0
    loop.remove_reader(c.sock.fileno())
    c.close()
    return Row("asyncio + py-amqp, socket on the loop", n / el, pct(lat, .5), pct(lat, .99))


async def io_thread_rpc(url: str, queue: str, n: int) -> Row:
    loop = asyncio.get_running_loop()
    c = raw_conn(url)
    ch = c.channel()
    fut: list[asyncio.Future[None]] = []
    out: list[amqp.Message] = []
    wake_r, wake_w = socket.socketpair()
    stop = threading.Event()
    lock = threading.Lock()

    def on(msg: amqp.Message) -> None:
        f = fut[0]
        loop.call_soon_threadsafe(f.set_result, None)

    ch.basic_consume("amq.rabbitmq.reply-to", no_ack=True, callback=on)

    def io() -> None:   # owns the socket: writes what the loop queued, reads and dispatches
        import select
        while not stop.is_set():
            r, _, _ = select.select([c.sock, wake_r], [], [], 0.5)
            if wake_r in r:
                wake_r.recv(4096)
                with lock:
                    todo, out[:] = out[:], []
                for m in todo:
                    ch.basic_publish(m, exchange="", routing_key=queue)
            if c.sock in r:
                while True:
                    try:
                        c.drain_events(timeout=0)
                    except TimeoutError:
                        break

    th = threading.Thread(target=io, daemon=True)
    th.start()
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        fut[:] = [loop.create_future()]
        t = time.perf_counter()
        with lock:
            out.append(amqp.Message(PAYLOAD, correlation_id=str(i), reply_to="amq.rabbitmq.reply-to"))
        wake_w.send(b"x")
        await fut[0]
        lat.append(time.perf_counter() - t)
    el = time.perf_counter() - t0
    stop.set()
    wake_w.send(b"x")
    th.join()
    c.close()
    return Row("asyncio + py-amqp, one I/O thread", n / el, pct(lat, .5), pct(lat, .99))


# -- pika --------------------------------------------------------------------------------

def pika_rpc(url: str, queue: str, n: int) -> Row:
    import pika
    host, port = hostport(url)
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, port))
    ch = conn.channel()
    got: list[bool] = []
    ch.basic_consume("amq.rabbitmq.reply-to", lambda *a: got.append(True), auto_ack=True)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        ch.basic_publish("", queue, PAYLOAD, pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id=str(i)))
        while not got:
            conn.process_data_events(time_limit=None)
        got.clear()
        lat.append(time.perf_counter() - t)
    el = time.perf_counter() - t0
    conn.close()
    return Row("pika BlockingConnection RPC", n / el, pct(lat, .5), pct(lat, .99))


# -- kombu -------------------------------------------------------------------------------

KOMBU_CLIENT = '''
import json, sys, time, uuid
from kombu import Connection, Consumer, Exchange, Producer, Queue
url, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = "x" * 100
out = {}

def pct(lat, q):
    lat = sorted(lat)
    return lat[min(len(lat) - 1, int(q * len(lat)))]

# RPC-style echo against the raw server: direct reply-to, one in flight
with Connection(url) as conn:
    ch = conn.channel()
    got = []
    reply = Queue("amq.rabbitmq.reply-to", no_ack=True, no_declare=True)
    consumer = Consumer(ch, [reply], no_ack=True, on_message=got.append)
    consumer.consume()
    producer = Producer(ch, exchange=Exchange(""), routing_key=queue)

    def call(i):
        producer.publish(body, routing_key=queue, reply_to="amq.rabbitmq.reply-to",
                         correlation_id=str(i), retry=False)
        while not got:
            conn.drain_events(timeout=10)
        got.clear()

    for i in range(200):
        call(i)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter(); call(i); lat.append(time.perf_counter() - t)
    el = time.perf_counter() - t0
    out["rpc"] = {"rate": n / el, "p50": pct(lat, .5), "p99": pct(lat, .99)}

# publishing persistent 100-byte tasks to a durable queue: unconfirmed, then confirmed
for key, opts, m in (("pub", {}, n * 10), ("pubc", {"confirm_publish": True}, n * 2)):
    q = Queue("bench.kombu.%s" % uuid.uuid4().hex[:8], durable=True, auto_delete=False)
    with Connection(url, transport_options=opts) as conn:
        ch = conn.channel()
        q(ch).declare()
        producer = Producer(ch, exchange=Exchange(""), routing_key=q.name)
        t0 = time.perf_counter()
        for _ in range(m):
            producer.publish(body, routing_key=q.name, delivery_mode=2, retry=False)
        el = time.perf_counter() - t0
        q(conn.channel()).delete()
    out[key] = {"rate": m / el}
print(json.dumps(out))
'''


def venv_python(venv: Path, package: str) -> tuple[Path, str]:
    """``venv``'s python, with ``package`` installed there when missing; ("", why) on failure."""
    py = venv / "bin" / "python"
    if not py.exists():
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if r.returncode:
            return py, f"cannot make {venv}: {r.stderr[-200:]}"
    if subprocess.run([str(py), "-c", f"import {package}"], capture_output=True).returncode:
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", package], capture_output=True,
                           text=True)
        if r.returncode:
            return py, f"cannot install {package}: {r.stderr[-200:]}"
    return py, ""


def kombu_rows(url: str, queue: str, n: int) -> dict[str, Row]:
    names = {"krpc": "kombu RPC (direct reply-to), 1 in flight",
             "kpub": "kombu publish, no confirms",
             "kpubc": "kombu publish, confirm_publish (window 1)"}
    py, why = venv_python(KOMBU_VENV, "kombu")
    if not why:
        host, port = hostport(url)
        r = subprocess.run([str(py), "-c", KOMBU_CLIENT, f"amqp://guest:guest@{host}:{port}//",
                            queue, str(n)], capture_output=True, text=True, timeout=600)
        why = f"client failed: {r.stderr[-300:]}" if r.returncode else ""
    if why:
        return {k: Row(v, 0.0, note=why) for k, v in names.items()}
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return {"krpc": Row(names["krpc"], d["rpc"]["rate"], d["rpc"]["p50"], d["rpc"]["p99"]),
            "kpub": Row(names["kpub"], d["pub"]["rate"]),
            "kpubc": Row(names["kpubc"], d["pubc"]["rate"])}


# -- Nameko ------------------------------------------------------------------------------

NAMEKO_SERVICE = '''
from nameko.rpc import rpc
class Echo:
    name = "bench_echo"
    @rpc
    def echo(self, value):
        return value
'''

NAMEKO_CLIENT = '''
import json, sys, time
from nameko.standalone.rpc import ClusterRpcProxy
n = int(sys.argv[2]); lat = []
with ClusterRpcProxy({"AMQP_URI": sys.argv[1]}) as rpc:
    for _ in range(50):
        rpc.bench_echo.echo("x" * 100)
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter(); rpc.bench_echo.echo("x" * 100); lat.append(time.perf_counter() - t)
    el = time.perf_counter() - t0
lat.sort()
print(json.dumps({"rate": n / el, "p50": lat[len(lat) // 2], "p99": lat[int(.99 * len(lat))]}))
'''


def nameko_rpc(url: str, n: int) -> Row:
    py = NAMEKO_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(NAMEKO_VENV)], check=True)
    if subprocess.run([str(py), "-c", "import nameko"], capture_output=True).returncode:
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "nameko"], capture_output=True,
                           text=True)
        if r.returncode:
            return Row("Nameko ClusterRpcProxy", 0.0, note=f"cannot install: {r.stderr[-200:]}")
    work = Path("/tmp/vertebra-bench-nameko")
    work.mkdir(exist_ok=True)
    (work / "bench_echo.py").write_text(NAMEKO_SERVICE)
    host, port = hostport(url)
    uri = f"amqp://guest:guest@{host}:{port}/"
    svc = subprocess.Popen([str(NAMEKO_VENV / "bin" / "nameko"), "run", "bench_echo", "--broker", uri],
                           cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_consumer(url, "rpc-bench_echo")
        r = subprocess.run([str(py), "-c", NAMEKO_CLIENT, uri, str(n)], capture_output=True,
                           text=True, timeout=300)
        if r.returncode:
            return Row("Nameko ClusterRpcProxy", 0.0, note=f"client failed: {r.stderr[-300:]}")
        d = json.loads(r.stdout.strip().splitlines()[-1])
        return Row("Nameko ClusterRpcProxy", d["rate"], d["p50"], d["p99"])
    except Exception as exc:   # report, don't abort the whole bench
        err = svc.stderr.read(300).decode(errors="replace") if svc.poll() is not None and svc.stderr else ""
        return Row("Nameko ClusterRpcProxy", 0.0, note=f"{type(exc).__name__}: {exc} {err}")
    finally:
        svc.terminate()
        try:
            svc.wait(10)
        except subprocess.TimeoutExpired:
            svc.kill()
        c = raw_conn(url)
        try:
            c.channel().queue_delete("rpc-bench_echo")
        finally:
            c.close()


# -- vertebra ----------------------------------------------------------------------------

def vertebra_sync(url: str, n: int) -> Row:
    import vertebra
    lat = []
    with vertebra.connect(url) as bus:
        echo = bus.proxy("echo", timeout=10)
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


async def vertebra_tasks(url: str, n: int, window: int) -> Row:
    """Confirmed tasks to one service with ``window`` confirms outstanding, as the raw row.

    The outbox gives one destination a quarter of its send window (so that one busy
    service cannot hold everyone's sends): ``send_window`` is 4 x ``window`` here."""
    import vertebra
    async with vertebra.connect_async(url.replace("echo", "sinkless"), send_window=4 * window,
                                      outbox_size=n + 10) as bus:
        await bus.transport.send(vertebra.wire.envelope.Envelope(   # declare the queue
            "task", service="nobody", method="sink", args=[PAYLOAD]))
        t0 = time.perf_counter()
        for _ in range(n):
            bus.cast("nobody", "sink", [PAYLOAD], kind="task")
        left = await bus.flush(120)
        el = time.perf_counter() - t0
    return Row(f"vertebra confirmed tasks, window {window}", (n - left) / el,
               note=f"(send_window {4 * window})")


def cleanup(url: str, prefix: str) -> None:
    c = raw_conn(url)
    for q in ("call.echo", "task.echo", "dead.echo", "task.nobody", "dead.nobody"):
        ch = c.channel()
        try:
            ch.queue_delete(f"{prefix}vertebra.{q}")
        except Exception:
            pass
    for e in ("events", "discovery", "dlx", "delay"):
        ch = c.channel()
        try:
            ch.exchange_delete(f"{prefix}vertebra.{e}")
        except Exception:
            pass
    c.close()


# -- main --------------------------------------------------------------------------------

def fmt_us(x: float | None) -> str:
    return "" if x is None else f"{x * 1e6:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    ap.add_argument("--n", type=int, default=2000, help="round trips per RPC figure")
    ap.add_argument("--no-nameko", action="store_true")
    ap.add_argument("--no-kombu", action="store_true")
    ap.add_argument("--serve-raw")
    ap.add_argument("--serve-vertebra")
    a = ap.parse_args()
    if a.serve_raw:
        serve_raw(a.url, a.serve_raw)
        return
    if a.serve_vertebra:
        serve_vertebra(a.serve_vertebra)
        return

    n = a.n
    queue = f"bench.rpc.{uuid.uuid4().hex[:8]}"
    prefix = f"bench-{uuid.uuid4().hex[:6]}."
    vurl = f"{a.url}?prefix={prefix}"
    rows: dict[str, Row] = {}
    procs = [spawn("--url", a.url, "--serve-raw", queue), spawn("--serve-vertebra", vurl)]
    try:
        wait_consumer(a.url, queue)
        wait_consumer(a.url, f"{prefix}vertebra.call.echo")
        raw_rpc(a.url, queue, 200, 1)                                     # warm up
        rows["raw1"] = raw_rpc(a.url, queue, n, 1)
        rows["raw100"] = raw_rpc(a.url, queue, n * 5, 100)
        rows["pub"] = raw_publish(a.url, n * 10, None)
        rows["pubc"] = raw_publish(a.url, n * 10, 100)
        rows["pubc1"] = raw_publish(a.url, n * 2, 1)
        rows["loop"] = asyncio.run(loop_reader_rpc(a.url, queue, n))
        rows["thread"] = asyncio.run(io_thread_rpc(a.url, queue, n))
        rows["pika"] = pika_rpc(a.url, queue, n)
        if not a.no_kombu:
            rows.update(kombu_rows(a.url, queue, n))
        rows["vsync"] = vertebra_sync(vurl, n)
        rows["vpipe"] = asyncio.run(vertebra_pipelined(vurl, n * 5, 100))
        rows["vtask"] = asyncio.run(vertebra_tasks(vurl, n * 10, 100))
        if not a.no_nameko:
            rows["nameko"] = nameko_rpc(a.url, max(200, n // 4))
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        cleanup(a.url, prefix)

    ratio: dict[str, tuple[str, str]] = {"vsync": ("raw1", "raw 1 in flight"),
                                         "vpipe": ("raw100", "raw 100 in flight"),
                                         "vtask": ("pubc", "raw confirms w100"),
                                         "thread": ("loop", "socket on loop"),
                                         "pika": ("raw1", "raw 1 in flight"),
                                         "krpc": ("raw1", "raw 1 in flight"),
                                         "kpub": ("pub", "raw no confirms"),
                                         "kpubc": ("pubc1", "raw confirms w1"),
                                         "nameko": ("raw1", "raw 1 in flight")}
    print(f"\nAMQP bench, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, 100-byte echo, "
          f"n={n} (noisy on a shared machine: compare ratios within one run)\n")
    print(f"{'what':44} {'per s':>9} {'p50 µs':>8} {'p99 µs':>8}  ratio")
    for key, r in rows.items():
        rel = ""
        if key in ratio and rows.get(ratio[key][0]) and rows[ratio[key][0]].rate:
            rel = f"{r.rate / rows[ratio[key][0]].rate:.2f}× {ratio[key][1]}"
        if key == "vsync":
            rel += "".join(f"; {r.rate / rows[k].rate:.2f}× {label}"
                           for k, label in (("krpc", "kombu"), ("nameko", "Nameko"))
                           if k in rows and rows[k].rate)
        print(f"{r.name:44} {r.rate:9,.0f} {fmt_us(r.p50):>8} {fmt_us(r.p99):>8}  {rel} {r.note}")


if __name__ == "__main__":
    main()
