"""The zmq:// hub: a broker for calls, casts, tasks, events, liveness and discovery.

One ROUTER socket carries calls, casts, tasks, replies, acks, heartbeats and discovery
(docs/protocol/zmq.md); an XSUB/XPUB pair on two more ports carries events.  The hub
routes on the frames before the envelope and never decodes an envelope.

* Work is ready-based: a node that serves a service with ``prefetch=n`` gets ``n``
  credits; each delivery spends one, each reply / ack / nack gives it back.  Work with no
  credit anywhere waits in the hub's queue for that service (bounded).  Calls rotate over
  the replicas that have credit.
* Liveness: every peer heartbeats; a peer silent for ``heartbeat * liveness`` seconds is
  dropped: its services leave routing, its unacked casts and tasks go back to the front
  of their queue, and callers of its in-flight calls get UNREACHABLE at once.
* CurveZMQ: give the hub a secret key and it serves CURVE only; with ``allow`` (a list of
  client public keys) a ZAP handler refuses every other key.

``Hub`` runs in a background thread (``start()`` / ``stop()`` or ``with Hub(...) as hub``);
:func:`run_hub` runs one in the foreground until SIGINT / SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import frames as F
from .keys import decode_key, load_keypair, load_public_key

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "Hub", "run_hub"]

log = logging.getLogger("vertebra.transports.zmq.hub")

DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024
_TICK = 0.05  # seconds between liveness checks
_DRAIN = 256  # messages taken from one socket before looking at the others
_NOW = int(zmq.NOBLOCK)
_MORE_NOW = int(zmq.NOBLOCK | zmq.SNDMORE)


_Item = tuple[int, bytes, bytes, bytes, int]  # command, caller, message id, envelope, failures


@dataclass(slots=True, eq=False)
class _Peer:
    ident: bytes
    interval: float
    liveness: int
    last_seen: float
    last_sent: float = 0.0
    serving: dict[bytes, int] = field(default_factory=dict)   # service -> prefetch
    # delivery tag -> (service, (command, caller ident, message id, envelope, attempts))
    inflight: dict[bytes, tuple[bytes, _Item]] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Service:
    name: bytes
    workers: list[bytes] = field(default_factory=list)      # rotation order
    credit: dict[bytes, int] = field(default_factory=dict)  # ident -> free credits
    info: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    available: int = 0
    rr: int = 0
    queue: deque[_Item] = field(default_factory=deque)


class _AllowList:
    """ZAP credentials provider: a set of Z85 client keys."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = {load_public_key(k) if os.path.exists(k) else decode_key(k) for k in keys}

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


class Hub:
    """A zmq:// hub, embedded in this process (a background thread).

    ``bind`` is a ZeroMQ endpoint (``tcp://127.0.0.1:7000``; port ``0`` or ``*`` picks a
    free one) or a ``zmq://host:port`` URL.  After :meth:`start`, :attr:`url` is the
    ``zmq://`` URL clients use and :attr:`endpoint` the bound ROUTER endpoint.
    """

    def __init__(self, bind: str = "tcp://127.0.0.1:7000", *, heartbeat: float = 1.0,
                 liveness: int = 3, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 curve_secret_key: str | None = None, curve_secret_key_file: str | None = None,
                 allow: Iterable[str] | None = None, max_queue: int = 100_000,
                 max_attempts: int = 3) -> None:
        if bind.startswith("zmq://"):
            bind = "tcp://" + bind[len("zmq://"):].split("?", 1)[0].rstrip("/")
        if bind.startswith("tcp://") and (bind.endswith(":0") or bind.endswith(":*")):
            bind = bind.rsplit(":", 1)[0] + ":*"
        self.bind = bind
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.max_message_size = max_message_size
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.dead_letters: deque[tuple[bytes, bytes, int]] = deque(maxlen=1000)
        """The last dead-lettered messages: (service, envelope, attempts)."""
        self.public_key: bytes | None = None
        self._secret: bytes | None = None
        if curve_secret_key_file:
            self.public_key, self._secret = load_keypair(curve_secret_key_file)
        elif curve_secret_key:
            self._secret = decode_key(curve_secret_key)
            self.public_key = zmq.curve_public(self._secret)
        self._allow = _AllowList(allow) if allow is not None else None
        if self._allow is not None and self._secret is None:
            raise ValueError("an allow-list needs CURVE: give the hub a secret key")
        self.stats: dict[str, int] = {"malformed": 0, "oversized": 0, "dropped": 0,
                                      "routed": 0, "events": 0, "expired_peers": 0,
                                      "dead_lettered": 0}
        self.endpoint = ""
        self.xsub_endpoint = ""
        self.xpub_endpoint = ""
        self._peers: dict[bytes, _Peer] = {}
        self._services: dict[bytes, _Service] = {}
        self._tag = 0
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._ctl_addr = f"inproc://vertebra-hub-{id(self):x}-{os.getpid()}"
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """The ``zmq://host:port`` URL of this hub (after :meth:`start`)."""
        if not self.endpoint.startswith("tcp://"):
            return self.endpoint
        hostport = self.endpoint[len("tcp://"):]
        host, _, port = hostport.rpartition(":")
        if host in ("0.0.0.0", "*", ""):
            host = "127.0.0.1"
        elif host in ("::", "[::]"):
            host = "[::1]"
        return f"zmq://{host}:{port}"

    def start(self) -> Hub:
        """Bind and serve in a daemon thread; returns once the sockets are bound."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run_thread, name="vertebra-hub", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the sockets.  Safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None or self._ctx is None:
            return
        ctl = self._ctx.socket(zmq.PAIR)
        ctl.connect(self._ctl_addr)
        ctl.send(b"stop")
        ctl.close(linger=1000)  # the hub thread's ctx.term() waits for every socket
        thread.join(timeout)

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self) -> None:
        """Serve until :meth:`stop` (from another thread) or KeyboardInterrupt; blocks."""
        self.start()
        thread = self._thread
        try:
            while thread is not None and thread.is_alive():
                thread.join(0.5)
        finally:
            self.stop()

    def _run_thread(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._ctx = ctx
        auth = None
        try:
            try:
                if self._allow is not None:
                    from zmq.auth.thread import ThreadAuthenticator
                    auth = ThreadAuthenticator(ctx, log=logging.getLogger("vertebra.transports.zmq.auth"))
                    auth.start()
                    auth.configure_curve_callback("*", credentials_provider=self._allow)
                sockets = self._open(ctx)
            except BaseException as exc:  # reported to start()
                self._error = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
                self._started.set()
                return
            self._started.set()
            try:
                self._loop(*sockets)
            finally:
                for s in sockets:
                    s.close(linger=0)
        finally:
            if auth is not None:
                auth.stop()
            ctx.term()

    def _socket(self, ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
        s = ctx.socket(kind)
        s.linger = 0
        s.sndhwm = 100_000
        s.rcvhwm = 100_000
        s.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_message_size + 65536)
        if self._secret is not None:
            s.curve_server = True
            s.curve_secretkey = self._secret
        return s

    def _open(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> tuple[zmq.Socket[bytes], ...]:
        router = self._socket(ctx, zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        xsub = self._socket(ctx, zmq.XSUB)
        xpub = self._socket(ctx, zmq.XPUB)
        ctl = ctx.socket(zmq.PAIR)
        ctl.linger = 0
        opened = [router, xsub, xpub, ctl]
        try:
            router.bind(self.bind)
            self.endpoint = _endpoint(router)
            if self.endpoint.startswith("tcp://"):
                host = self.endpoint[len("tcp://"):].rpartition(":")[0]
                xsub.bind(f"tcp://{host}:*")
                xpub.bind(f"tcp://{host}:*")
            else:
                xsub.bind(self.bind + ".xsub")
                xpub.bind(self.bind + ".xpub")
            self.xsub_endpoint = _endpoint(xsub)
            self.xpub_endpoint = _endpoint(xpub)
            ctl.bind(self._ctl_addr)
            xsub.send(b"\x01")  # subscribe to everything every publisher sends
        except BaseException:
            for s in opened:
                s.close(linger=0)
            raise
        return router, xsub, xpub, ctl

    # ---------------------------------------------------------------- main loop

    def _loop(self, router: zmq.Socket[bytes], xsub: zmq.Socket[bytes],
              xpub: zmq.Socket[bytes], ctl: zmq.Socket[bytes]) -> None:
        self._router, self._xpub = router, xpub
        poller = zmq.Poller()
        for s in (router, xsub, xpub, ctl):
            poller.register(s, zmq.POLLIN)
        next_tick = time.monotonic() + _TICK
        noblock = _NOW
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            ready = dict(poller.poll(int(timeout * 1000) + 1))
            if ready:
                if ctl in ready:
                    return
                if router in ready:
                    now = time.monotonic()
                    for _ in range(_DRAIN):
                        try:
                            msg = router.recv_multipart(noblock)
                        except zmq.Again:
                            break
                        self._on_router(msg, now)
                if xsub in ready:
                    for _ in range(_DRAIN):
                        try:
                            msg = xsub.recv_multipart(noblock)
                        except zmq.Again:
                            break
                        self._on_event(msg)
                if xpub in ready:
                    for _ in range(_DRAIN):
                        try:
                            xpub.recv(noblock)  # subscription changes: XPUB keeps the filter
                        except zmq.Again:
                            break
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + _TICK

    def _send(self, ident: bytes, parts: list[bytes]) -> bool:
        # frame by frame with plain int flags: send_multipart's enum arithmetic was a
        # tenth of the hub's time in a profile
        send = self._router.send
        try:
            send(ident, _MORE_NOW)
            last = parts[-1]
            for part in parts[:-1]:
                send(part, _MORE_NOW)
            send(last, _NOW)
        except zmq.ZMQError:  # gone (ROUTER_MANDATORY) or over its high-water mark
            self.stats["dropped"] += 1
            return False
        return True

    def _bad(self, ident: bytes, reason: str, msgid: bytes = b"") -> None:
        self.stats["malformed"] += 1
        log.warning("hub: bad message from %s: %s", ident.hex(), reason)
        self._send(ident, [F.header(F.PROTOCOL), msgid, reason.encode()[:500]])

    # ---------------------------------------------------------------- ROUTER traffic

    def _on_router(self, msg: list[bytes], now: float) -> None:
        if len(msg) < 2:
            self.stats["malformed"] += 1
            return
        ident = msg[0]
        try:
            cmd, args = F.parse(msg[1:], F.CLIENT_COMMANDS)
        except F.FrameError as exc:
            self._bad(ident, str(exc))
            return
        peer = self._peers.get(ident)
        if peer is None:
            if cmd == F.HELLO:
                self._hello(ident, args[0], now)
                return
            if cmd == F.BYE:
                return
            # a peer we do not know (the hub restarted): serve it, and ask it to re-register
            peer = self._peers[ident] = _Peer(ident, self.heartbeat, self.liveness, now)
            self._send(ident, [F.header(F.RESET)])
        peer.last_seen = now
        if cmd <= F.TASK and cmd >= F.CALL:
            service, msgid, body = args
            if len(body) > self.max_message_size:
                self.stats["oversized"] += 1
                self._bad(ident, f"message of {len(body)} bytes is over the hub's maximum "
                                 f"of {self.max_message_size}", msgid)
                return
            self._route(service, (cmd, ident, msgid, body, 0), confirm=cmd != F.CALL)
        elif cmd == F.REPLY:
            tag, body = args
            entry = peer.inflight.pop(tag, None)
            if entry is None:
                self.stats["dropped"] += 1
                return
            self._send(entry[1][1], [F.header(F.ANSWER), body])
            self._release(peer, entry[0])
        elif cmd == F.ACK:
            entry = peer.inflight.pop(args[0], None)
            if entry is not None:
                self._release(peer, entry[0])
        elif cmd == F.NACK:
            entry = peer.inflight.pop(args[0], None)
            if entry is not None:
                self._nack(entry[0], entry[1], args[1])  # back at the front first,
                self._release(peer, entry[0])            # then the credit pumps it out
                svc = self._services.get(entry[0])
                if svc is not None:
                    self._pump(svc)
        elif cmd == F.HEARTBEAT:
            pass
        elif cmd == F.SERVE:
            self._serve(peer, *args)
        elif cmd == F.UNSERVE:
            self._unserve(peer, args[0])
        elif cmd == F.DISCOVER:
            self._send(ident, [F.header(F.SERVICES), args[0], self._directory()])
        elif cmd == F.SYNC:
            self._xpub.send_multipart([F.EVENT_CONTROL + b"sync." + args[0], b""])
        elif cmd == F.BYE:
            self._drop_peer(peer, "the replica closed")
        elif cmd == F.HELLO:
            self._hello(ident, args[0], now)

    def _hello(self, ident: bytes, body: bytes, now: float) -> None:
        try:
            opts = json.loads(body) if body else {}
            if not isinstance(opts, dict):
                raise ValueError("HELLO carries a JSON object")
            interval = float(opts.get("heartbeat", self.heartbeat))
            liveness = int(opts.get("liveness", self.liveness))
            if not (0.01 <= interval <= 3600 and 1 <= liveness <= 1000):
                raise ValueError("heartbeat or liveness out of range")
        except (ValueError, TypeError) as exc:
            self._bad(ident, f"bad HELLO: {exc}")
            return
        old = self._peers.get(ident)
        if old is not None:
            self._drop_peer(old, "the replica reconnected")
        self._peers[ident] = _Peer(ident, interval, liveness, now, now)
        welcome = {"v": F.VERSION, "xsub": self.xsub_endpoint, "xpub": self.xpub_endpoint,
                   "heartbeat": interval, "liveness": liveness,
                   "max_message_size": self.max_message_size}
        self._send(ident, [F.header(F.WELCOME), json.dumps(welcome).encode()])

    def _route(self, name: bytes, item: _Item, confirm: bool = False) -> None:
        """Deliver or queue ``item``; ``confirm``: tell a cast's or task's sender (QUEUED)."""
        svc = self._services.get(name)
        if svc is None or not svc.workers:
            if item[0] == F.CALL:
                self._send(item[1], [F.header(F.UNREACHABLE), item[2],
                                     b"no live replica serves " + name[:200]])
                return
            if svc is None:
                svc = self._services[name] = _Service(name)
        if not svc.available and len(svc.queue) >= self.max_queue:
            self.stats["dropped"] += 1   # the sender keeps it (UNREACHABLE) and retries later
            self._send(item[1], [F.header(F.UNREACHABLE), item[2], b"the hub's queue is full"])
            return
        if confirm:
            self._send(item[1], [F.header(F.QUEUED), item[2]])
        if svc.available:
            self._deliver(svc, self._next_worker(svc), item)
        else:
            svc.queue.append(item)

    def _next_worker(self, svc: _Service) -> bytes:
        workers, credit = svc.workers, svc.credit
        n = len(workers)
        i = svc.rr
        for _ in range(n):
            i = (i + 1) % n
            w = workers[i]
            if credit[w] > 0:
                svc.rr = i
                return w
        raise AssertionError("available credit but no worker has any")

    def _deliver(self, svc: _Service, ident: bytes, item: _Item) -> None:
        svc.credit[ident] -= 1
        svc.available -= 1
        self._tag += 1
        tag = self._tag.to_bytes(8, "little")
        peer = self._peers[ident]
        peer.inflight[tag] = (svc.name, item)
        self.stats["routed"] += 1
        if not self._send(ident, [F.header(item[0]), svc.name, tag, item[3]]):
            self._drop_peer(peer, "the replica is unreachable")

    def _pump(self, svc: _Service) -> None:
        while svc.queue and svc.available:
            self._deliver(svc, self._next_worker(svc), svc.queue.popleft())

    def _requeue(self, name: bytes, item: _Item) -> bool:
        """Put a failed delivery back at the front of its queue; dead-letter past max_attempts."""
        cmd, caller, msgid, body, failures = item
        failures += 1
        if failures >= self.max_attempts:
            self.stats["dead_lettered"] += 1
            self.dead_letters.append((name, body, failures))
            log.warning("hub: dead-lettered a message for %s after %d attempts",
                        name.decode(errors="replace"), failures)
            return False
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = _Service(name)
        svc.queue.appendleft((cmd, caller, msgid, body, failures))
        return True

    def _nack(self, name: bytes, item: _Item, how: bytes) -> None:
        cmd, caller, msgid = item[0], item[1], item[2]
        if how == b"1" and cmd == F.CALL:  # e.g. the replica was leaving: try another one
            self._route(name, item)
        elif how == b"1":
            self._requeue(name, item)
        elif how == b"p":
            self.stats["malformed"] += 1
            self._send(caller, [F.header(F.PROTOCOL), msgid, b"the node could not decode the message"])
        elif cmd == F.CALL:
            self._send(caller, [F.header(F.UNREACHABLE), msgid, b"rejected by the node"])
        else:
            self.stats["dead_lettered"] += 1
            self.dead_letters.append((name, item[3], item[4] + 1))

    def _release(self, peer: _Peer, name: bytes) -> None:
        if name not in peer.serving:
            return
        svc = self._services[name]
        svc.credit[peer.ident] += 1
        svc.available += 1
        if svc.queue:
            self._pump(svc)

    def _serve(self, peer: _Peer, name: bytes, prefetch_b: bytes, info_b: bytes) -> None:
        try:
            prefetch = int(prefetch_b)
            if not 1 <= prefetch <= 100_000:
                raise ValueError("prefetch out of range")
            info = json.loads(info_b)
            if not isinstance(info, dict):
                raise ValueError("service info is a JSON object")
            name.decode()
        except (ValueError, UnicodeDecodeError) as exc:
            self._bad(peer.ident, f"bad SERVE: {exc}")
            return
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = _Service(name)
        svc.info[peer.ident] = info
        if name in peer.serving:
            return
        peer.serving[name] = prefetch
        in_flight = sum(1 for n, _ in peer.inflight.values() if n == name)
        svc.workers.append(peer.ident)
        svc.credit[peer.ident] = max(0, prefetch - in_flight)
        svc.available += svc.credit[peer.ident]
        self._pump(svc)

    def _unserve(self, peer: _Peer, name: bytes) -> None:
        if peer.serving.pop(name, None) is None:
            return
        svc = self._services[name]
        svc.workers.remove(peer.ident)
        svc.available -= svc.credit.pop(peer.ident)
        svc.info.pop(peer.ident, None)
        svc.rr = 0
        if not svc.workers:
            self._fail_queued_calls(svc)
            if not svc.queue:
                del self._services[name]

    def _fail_queued_calls(self, svc: _Service) -> None:
        keep: deque[_Item] = deque()
        for item in svc.queue:
            if item[0] == F.CALL:
                self._send(item[1], [F.header(F.UNREACHABLE), item[2], b"no live replica left"])
            else:
                keep.append(item)
        svc.queue = keep

    def _drop_peer(self, peer: _Peer, reason: str) -> None:
        if self._peers.get(peer.ident) is not peer:
            return
        del self._peers[peer.ident]
        for name in list(peer.serving):
            self._unserve(peer, name)
        touched: set[bytes] = set()
        for name, item in reversed(list(peer.inflight.values())):
            if item[0] == F.CALL:
                if item[1] != peer.ident:
                    self._send(item[1], [F.header(F.UNREACHABLE), item[2], reason.encode()])
            elif self._requeue(name, item):
                touched.add(name)
        peer.inflight.clear()
        for name in touched:
            self._pump(self._services[name])

    def _directory(self) -> bytes:
        out = []
        for svc in self._services.values():
            if not svc.workers:
                continue
            info = dict(next(iter(svc.info.values()), {}))
            info["name"] = svc.name.decode()
            info["replicas"] = len(svc.workers)
            info["transport"] = "zmq"
            out.append(info)
        return json.dumps(out).encode()

    def _tick(self, now: float) -> None:
        for peer in list(self._peers.values()):
            if now - peer.last_seen > peer.interval * peer.liveness:
                self.stats["expired_peers"] += 1
                log.info("hub: peer %s missed its heartbeats; dropped", peer.ident.hex())
                self._drop_peer(peer, "the replica stopped answering heartbeats")
            elif now - peer.last_sent >= peer.interval:
                peer.last_sent = now
                self._send(peer.ident, [F.header(F.HEARTBEAT)])

    # ---------------------------------------------------------------- events

    def _on_event(self, msg: list[bytes]) -> None:
        if len(msg) != 2 or not msg[0] or len(msg[1]) > self.max_message_size:
            self.stats["malformed"] += 1
            if len(msg) == 2 and len(msg[1]) > self.max_message_size:
                self.stats["oversized"] += 1
            return
        topic = msg[0]
        if topic[:1] == F.EVENT_CONTROL:
            if topic == F.EVENT_CONTROL + b"hello" and msg[1] in self._peers:
                self._send(msg[1], [F.header(F.PUBOK)])
            return
        self.stats["events"] += 1
        try:
            self._xpub.send_multipart(msg, zmq.NOBLOCK)
        except zmq.ZMQError:
            self.stats["dropped"] += 1


def run_hub(bind: str, *, curve_secret_key_file: str | None = None,
            allow: list[str] | None = None) -> None:
    """Run a hub in the foreground until SIGINT or SIGTERM (``vertebra hub``)."""
    hub = Hub(bind, curve_secret_key_file=curve_secret_key_file, allow=allow)
    done = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        done.set()

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        hub.start()
        log.info("hub serving on %s (events %s / %s)", hub.url, hub.xsub_endpoint, hub.xpub_endpoint)
        print(f"vertebra hub on {hub.url}", flush=True)
        while not done.wait(0.5):
            pass
    finally:
        hub.stop()
        for s, h in old.items():
            signal.signal(s, h)


def _endpoint(sock: zmq.Socket[bytes]) -> str:
    value = sock.getsockopt(zmq.LAST_ENDPOINT)
    return value.decode() if isinstance(value, bytes) else str(value)
