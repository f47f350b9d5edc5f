"""The zmq:// hub: a broker for calls, casts, tasks, events, liveness and discovery.

One ROUTER socket carries calls, casts, tasks, replies, acks, heartbeats, discovery and
dead letters (docs/protocol/zmq.md); an XSUB/XPUB pair on two more ports carries events.
The hub routes on the frames before the envelope and never decodes an envelope.  This
module is the socket loop; the rules (credit, queues, liveness, dead letters) are
:class:`~.state.HubState`'s.

* CurveZMQ: give the hub a secret key and it serves CURVE only; with ``allow`` (a list of
  client public keys) a ZAP handler refuses every other key.
* Options: ``heartbeat`` and ``liveness`` (a peer's own HELLO values win), ``max_queue``
  per service, ``max_redeliveries`` (a task whose worker died holding it more often is
  buried as ``WorkerLost``), ``max_dead_letters`` kept per service (the oldest dropped and
  counted past it), ``dedup_window`` (sends remembered to take a re-send once), ``grace``
  (seconds a restarted hub holds calls for services not back yet; default
  ``heartbeat × liveness``).

``Hub`` runs in a background thread (``start()`` / ``stop()`` or ``with Hub(...) as hub``);
:func:`run_hub` runs one in the foreground until SIGINT / SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable

import zmq

from . import frames as F
from .keys import decode_key, load_keypair, load_public_key
from .options import DEFAULT_MAX_MESSAGE_SIZE
from .state import HubState

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "Hub", "run_hub"]

log = logging.getLogger("vertebra.transports.zmq.hub")

_TICK = 0.05  # seconds between liveness checks
_DRAIN = 256  # messages taken from one socket before looking at the others
_NOW = int(zmq.NOBLOCK)
_MORE_NOW = int(zmq.NOBLOCK | zmq.SNDMORE)


class _AllowList:
    """ZAP credentials provider: a set of Z85 client keys."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = {load_public_key(k) if os.path.exists(k) else decode_key(k) for k in keys}
        self.z85 = sorted(k.decode("ascii") for k in self.keys)   # the keys are Z85 already

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
                 max_redeliveries: int = 3, max_dead_letters: int = 1000,
                 dedup_window: int = 100_000, grace: float | None = None) -> None:
        if bind.startswith("zmq://"):
            bind = "tcp://" + bind[len("zmq://"):].split("?", 1)[0].rstrip("/")
        if bind.startswith("tcp://") and (bind.endswith(":0") or bind.endswith(":*")):
            bind = bind.rsplit(":", 1)[0] + ":*"
        self.bind = bind
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.max_message_size = max_message_size
        self.max_queue = max_queue
        self.max_redeliveries = max_redeliveries
        self.max_dead_letters = max_dead_letters
        self.dedup_window = dedup_window
        self.grace = heartbeat * liveness if grace is None else grace
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
        self.state = self._new_state()
        """The routing state (:class:`~.state.HubState`); a new one at every start."""
        self.endpoint = ""
        self.xsub_endpoint = ""
        self.xpub_endpoint = ""
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._ctl_addr = f"inproc://vertebra-hub-{id(self):x}-{os.getpid()}"
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None

    def _new_state(self) -> HubState:
        state = HubState(self._send, heartbeat=self.heartbeat, liveness=self.liveness,
                         max_message_size=self.max_message_size, max_queue=self.max_queue,
                         max_redeliveries=self.max_redeliveries,
                         max_dead_letters=self.max_dead_letters, dedup_window=self.dedup_window,
                         grace=self.grace, now=time.monotonic())
        if self._allow is not None:
            state.allow = self._allow.z85
        return state

    @property
    def stats(self) -> dict[str, int]:
        """Counters: routed, malformed, oversized, dropped, events, expired_peers,
        duplicates (re-sends taken once), buried, worker_lost, replayed."""
        return self.state.stats

    @property
    def id(self) -> str:
        """This hub's identity (told in WELCOME; new at every start)."""
        return self.state.id

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
        self._started.clear()
        self._error = None
        self.state = self._new_state()
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
            self.state.endpoints = {"xsub": self.xsub_endpoint, "xpub": self.xpub_endpoint}
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
                    self.state.now = time.monotonic()
                    for _ in range(_DRAIN):
                        try:
                            msg = router.recv_multipart(noblock)
                        except zmq.Again:
                            break
                        self._on_router(msg)
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
                self.state.tick(now)
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

    def _on_router(self, msg: list[bytes]) -> None:
        if len(msg) < 2:
            self.stats["malformed"] += 1
            return
        ident = msg[0]
        try:
            cmd, args = F.parse(msg[1:], F.CLIENT_COMMANDS)
        except F.FrameError as exc:
            self.state.bad(ident, str(exc))
            return
        if cmd == F.SYNC:   # the one command that answers on the event sockets
            if ident in self.state.peers:
                self.state.peers[ident].last_seen = self.state.now
            self._xpub.send_multipart([F.EVENT_CONTROL + b"sync." + args[0], b""])
            return
        self.state.on_command(ident, cmd, args)

    # ---------------------------------------------------------------- events

    def _on_event(self, msg: list[bytes]) -> None:
        if len(msg) != 2 or not msg[0] or len(msg[1]) > self.max_message_size:
            self.stats["malformed"] += 1
            if len(msg) == 2 and len(msg[1]) > self.max_message_size:
                self.stats["oversized"] += 1
            return
        topic = msg[0]
        if topic[:1] == F.EVENT_CONTROL:
            if topic == F.EVENT_CONTROL + b"hello" and msg[1] in self.state.peers:
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
