"""zmq:// — the ZeroMQ transport: every bus talks to one hub (:mod:`.hub`).

Capability sheet
----------------
Guarantees
  * Calls go client DEALER -> hub ROUTER -> node DEALER and back, one hop each way; the
    hub rotates calls over the live replicas that have credit.
  * A call to a service with no live replica, or in flight to a replica that dies or
    closes, is answered UNREACHABLE at once by the hub (never left to the deadline).
  * Casts and tasks are ready-based (credit = ``prefetch``) and at-least-once while the
    hub runs: a replica that dies (heartbeats) or closes before acking has its work sent
    to another replica.
  * Events: publisher PUB -> hub XSUB/XPUB -> subscriber SUB; the ZeroMQ prefix filter
    does the coarse cut (at the hub), the full ``*``/``#`` match runs before a handler.
  * Liveness both ways by heartbeats (``heartbeat`` seconds, ``liveness`` missed beats);
    a bus that loses its hub says HELLO again and re-announces its services.
  * CurveZMQ when the URL carries ``server_key`` (and a client key pair).
Cannot
  * Tasks live in the hub's memory: a hub restart loses queued tasks (durable_tasks=False).
  * Events are fire-and-forget: a subscriber that is not connected misses them.
  * A call in flight to a replica that dies is not retried (UNREACHABLE instead).

URL: ``zmq://host:port?heartbeat=1.0&liveness=3&connect_timeout=5&max_message_size=N
&server_key=K&public_key=K&secret_key=K&key_file=PATH&server_key_file=PATH`` (keys as
percent-encoded Z85 or 64 hex digits; see docs/transports/zmq.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import zmq
import zmq.asyncio

from ...wire.codec import Codec, decode
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError
from ...wire.info import ServiceInfo
from ...wire.topics import literal_prefix, matches
from ..base import AnswerCallback, Capabilities, EventHandler, Handler, Incoming, Transport
from . import frames as F
from .hub import DEFAULT_MAX_MESSAGE_SIZE
from .keys import decode_key, load_keypair, load_public_key

__all__ = ["ZmqTransport"]

log = logging.getLogger("vertebra.transports.zmq")

_H_CALL, _H_CAST, _H_TASK = F.header(F.CALL), F.header(F.CAST), F.header(F.TASK)
_H_REPLY, _H_ACK, _H_NACK = F.header(F.REPLY), F.header(F.ACK), F.header(F.NACK)
_KIND_HEADER = {"call": _H_CALL, "cast": _H_CAST, "task": _H_TASK}
_DRAIN = 256


def _unreachable(msgid: str, message: str) -> Envelope:
    return Envelope("error", re=msgid, error={"code": "unreachable", "type": "Unreachable",
                                              "message": message, "traceback": ""})


class _Incoming(Incoming):
    """A delivery from the hub: ``tag`` is the hub's delivery tag, echoed in the answer."""

    __slots__ = ("_done", "_service", "_tag", "_transport")

    def __init__(self, envelope: Envelope, transport: ZmqTransport, service: bytes, tag: bytes) -> None:
        super().__init__(envelope)
        self._transport = transport
        self._service = service
        self._tag = tag
        self._done = False

    async def reply(self, answer: Envelope) -> None:
        """Send the answer; for the hub this also settles the delivery (credit comes back)."""
        if self._done:
            return
        self._done = True
        t = self._transport
        try:
            body = t.codec.encode(answer)
        except ProtocolError as exc:
            body = t.codec.encode(self.envelope.fail({"code": "protocol", "type": "ProtocolError",
                                                      "message": str(exc), "traceback": ""}))
        if len(body) > t.max_message_size:
            body = t.codec.encode(self.envelope.fail({
                "code": "protocol", "type": "ProtocolError", "traceback": "",
                "message": f"reply of {len(body)} bytes is over the maximum of {t.max_message_size}"}))
        await t._send_frames([_H_REPLY, self._tag, body])

    async def ack(self) -> None:
        """Settle the delivery (no-op after :meth:`reply`)."""
        if self._done:
            return
        self._done = True
        await self._transport._send_frames([_H_ACK, self._tag])

    async def reject(self, requeue: bool, error: dict[str, Any] | None = None) -> None:
        """Give the delivery back to the hub (``requeue``) or drop it.

        The hub's dead letters keep the message and its attempts, not ``error``: the node
        has logged it."""
        if self._done:
            return
        self._done = True
        await self._transport._send_frames([_H_NACK, self._tag, b"1" if requeue else b"0"])


class ZmqTransport(Transport):
    """A bus's connection to a zmq:// hub (see the module docstring)."""

    scheme = "zmq"
    capabilities = Capabilities(durable_tasks=False, task_redelivery=True, fast_unreachable=True,
                                multi_process=True, max_message_size=DEFAULT_MAX_MESSAGE_SIZE)

    def __init__(self, url: str, codec: Codec) -> None:
        super().__init__(url, codec)
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            raise ValueError(f"a zmq:// URL names a hub as zmq://host:port, got {url!r}")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        self.host = host
        self.endpoint = f"tcp://{host}:{parts.port}"
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.heartbeat = float(q.get("heartbeat", 1.0))
        self.liveness = int(q.get("liveness", 3))
        self.connect_timeout = float(q.get("connect_timeout", 5.0))
        self.max_message_size = int(q.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE))
        self._curve: tuple[bytes, bytes, bytes] | None = None
        server = (decode_key(q["server_key"]) if "server_key" in q else
                  load_public_key(q["server_key_file"]) if "server_key_file" in q else None)
        if server is not None:
            if "key_file" in q:
                public, secret = load_keypair(q["key_file"])
            elif "secret_key" in q:
                secret = decode_key(q["secret_key"])
                public = decode_key(q["public_key"]) if "public_key" in q else zmq.curve_public(secret)
            else:
                public, secret = zmq.curve_keypair()  # an anonymous client key
            self._curve = (server, public, secret)
        self.stats.update({"oversized": 0, "unreachable": 0, "events_filtered": 0})
        self._ctx: zmq.asyncio.Context | None = None
        self._dealer: zmq.asyncio.Socket | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._pub: zmq.asyncio.Socket | None = None
        self._on_answer: AnswerCallback | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._welcome: asyncio.Future[dict[str, Any]] | None = None
        self._pubok: asyncio.Future[None] | None = None
        self._syncs: dict[bytes, asyncio.Future[None]] = {}
        self._unconfirmed: dict[bytes, asyncio.Future[None]] = {}   # casts/tasks awaiting QUEUED
        self._discovers: dict[bytes, asyncio.Future[bytes]] = {}
        self._served: dict[bytes, tuple[ServiceInfo, Handler, int]] = {}
        self._subs: list[tuple[str, EventHandler]] = []
        self._last_hub = 0.0
        self._hub_alive = False
        self._closed = False
        self._connected = False
        self._counter = 0

    # ---------------------------------------------------------------- sockets

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        assert self._ctx is not None
        s = self._ctx.socket(kind)
        s.linger = 1000
        s.sndhwm = 100_000
        s.rcvhwm = 100_000
        s.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_message_size + 65536)
        if self._curve is not None:
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = self._curve
        return s

    async def connect(self, on_answer: AnswerCallback) -> None:
        """Say HELLO to the hub and open the event sockets; ConnectionError if it does not answer."""
        if self._connected:
            return
        self._on_answer = on_answer
        self._ctx = zmq.asyncio.Context()
        self._dealer = self._socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.ROUTING_ID, b"vz" + os.urandom(8))
        monitor = None
        if self._curve is not None:  # to tell "key refused" at once instead of timing out
            monitor = self._dealer.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        self._dealer.connect(self.endpoint)
        loop = asyncio.get_running_loop()
        self._welcome = loop.create_future()
        self._tasks.append(loop.create_task(self._recv_loop(), name="vertebra-zmq-recv"))
        try:
            await self._hello()
            welcome = await self._await_welcome(monitor)
        except TimeoutError:
            self._close_monitor(monitor)
            await self._teardown()
            raise ConnectionError(f"no answer from the zmq hub at {self.endpoint} within "
                                  f"{self.connect_timeout} s (down, or our key refused)") from None
        except BaseException:
            self._close_monitor(monitor)
            await self._teardown()
            raise
        self._close_monitor(monitor)
        self._sub = self._socket(zmq.SUB)
        self._sub.connect(self._event_endpoint(str(welcome["xpub"])))
        self._pub = self._socket(zmq.PUB)
        self._pub.connect(self._event_endpoint(str(welcome["xsub"])))
        self._tasks.append(loop.create_task(self._sub_loop(), name="vertebra-zmq-events"))
        self._tasks.append(loop.create_task(self._heartbeat_loop(), name="vertebra-zmq-heartbeat"))
        self._connected = True

    def _close_monitor(self, monitor: zmq.asyncio.Socket | None) -> None:
        # before the context terminates: term() waits for every socket, monitors too
        if monitor is None:
            return
        if self._dealer is not None:
            self._dealer.disable_monitor()
        monitor.close(linger=0)

    async def _await_welcome(self, monitor: zmq.asyncio.Socket | None) -> dict[str, Any]:
        assert self._welcome is not None
        if monitor is None:
            return await asyncio.wait_for(asyncio.shield(self._welcome), self.connect_timeout)
        refused: asyncio.Future[Any] = asyncio.ensure_future(monitor.recv_multipart())
        waiting: list[asyncio.Future[Any]] = [self._welcome, refused]
        try:
            done, _ = await asyncio.wait(waiting, timeout=self.connect_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
        if self._welcome in done:
            return self._welcome.result()
        if refused in done:
            raise ConnectionError(f"the zmq hub at {self.endpoint} refused the CURVE handshake "
                                  "(our key is not on its allow-list, or the wrong server_key)")
        raise TimeoutError

    def _event_endpoint(self, ep: str) -> str:
        if ep.startswith("tcp://"):
            return f"tcp://{self.host}:{ep.rpartition(':')[2]}"
        return ep

    async def _hello(self) -> None:
        body = json.dumps({"heartbeat": self.heartbeat, "liveness": self.liveness}).encode()
        await self._send_frames([F.header(F.HELLO), body])

    async def close(self) -> None:
        """Say BYE (the hub requeues our unacked work) and close the sockets."""
        if self._closed:
            return
        self._closed = True
        if self._dealer is not None and self._connected:
            with contextlib.suppress(ConnectionError):
                await self._send_frames([F.header(F.BYE)])
        await self._teardown()

    async def _teardown(self) -> None:
        self._connected = False
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for s in (self._dealer, self._sub, self._pub):
            if s is not None:
                s.close(linger=1000 if s is self._dealer else 0)
        self._dealer = self._sub = self._pub = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        for pending in (*self._syncs.values(), *self._unconfirmed.values()):
            if not pending.done():
                pending.set_exception(ConnectionError("the zmq transport closed"))
        for req in self._discovers.values():
            if not req.done():
                req.set_exception(ConnectionError("the zmq transport closed"))

    async def _send_frames(self, frames: list[bytes]) -> None:
        dealer = self._dealer
        if dealer is None:
            raise ConnectionError("the zmq transport is closed")
        try:
            await dealer.send_multipart(frames)
        except zmq.ZMQError as exc:
            raise ConnectionError(f"zmq send failed: {exc}") from None

    # ---------------------------------------------------------------- sending

    async def send(self, env: Envelope) -> None:
        """Route a call, cast or task through the hub, or publish an event."""
        if not self._connected:
            raise ConnectionError("the zmq transport is not connected")
        if env.kind == "event":
            await self._publish(env)
            return
        head = _KIND_HEADER.get(env.kind)
        if head is None:
            raise ProtocolError(f"cannot send a {env.kind!r} envelope")
        body = self.codec.encode(env)
        if len(body) > self.max_message_size:
            self.stats["oversized"] += 1
            raise ProtocolError(f"message of {len(body)} bytes is over the maximum of "
                                f"{self.max_message_size} (max_message_size)")
        if not self._hub_alive:
            raise ConnectionError(f"the zmq hub at {self.endpoint} is not answering")
        if env.kind == "call":
            await self._send_frames([head, env.service.encode(), env.id.encode(), body])
            return
        # A cast or task is sent once the hub holds it (QUEUED), like a publisher confirm:
        # until then only this process has it, so the outbox (and its spool) must keep it.
        msgid = env.id.encode()
        confirmed = asyncio.get_running_loop().create_future()
        self._unconfirmed[msgid] = confirmed
        try:
            await self._send_frames([head, env.service.encode(), msgid, body])
            await confirmed
        finally:
            self._unconfirmed.pop(msgid, None)

    async def _publish(self, env: Envelope) -> None:
        body = self.codec.encode(env)
        if len(body) > self.max_message_size:
            self.stats["oversized"] += 1
            raise ProtocolError(f"event of {len(body)} bytes is over the maximum of "
                                f"{self.max_message_size} (max_message_size)")
        pub = self._pub
        if pub is None:
            raise ConnectionError("the zmq transport is closed")
        if self._pubok is None or not self._pubok.done():
            await self._pub_handshake()
        try:
            await pub.send_multipart([env.topic.encode(), body])
        except zmq.ZMQError as exc:
            raise ConnectionError(f"zmq publish failed: {exc}") from None

    async def _pub_handshake(self) -> None:
        """Wait until the hub sees our PUB socket (else the first events would be lost)."""
        if self._pubok is None:
            self._pubok = asyncio.get_running_loop().create_future()
        assert self._pub is not None
        assert self._dealer is not None
        ident = self._dealer.getsockopt(zmq.ROUTING_ID)
        deadline = time.monotonic() + self.connect_timeout
        while not self._pubok.done():
            if time.monotonic() > deadline:
                self._pubok = None
                raise ConnectionError("the zmq hub does not see our event socket")
            await self._pub.send_multipart([F.EVENT_CONTROL + b"hello", ident])
            await asyncio.wait([self._pubok], timeout=0.05)

    # ---------------------------------------------------------------- serving

    async def serve(self, info: ServiceInfo, handler: Handler, prefetch: int = 16) -> None:
        """Announce ``info`` to the hub and take up to ``prefetch`` deliveries at a time."""
        if not self._connected:
            raise ConnectionError("the zmq transport is not connected")
        name = info.name.encode()
        self._served[name] = (info, handler, max(1, prefetch))
        await self._announce(name)

    async def _announce(self, name: bytes) -> None:
        info, _, prefetch = self._served[name]
        await self._send_frames([F.header(F.SERVE), name, str(prefetch).encode(),
                                 json.dumps(info.to_dict()).encode()])
        await self._roundtrip()  # the hub has the SERVE once it answers a later request

    async def unserve(self, service: str) -> None:
        """Leave routing for ``service``; deliveries still arriving are handed back."""
        name = service.encode()
        if self._served.pop(name, None) is not None and self._connected:
            await self._send_frames([F.header(F.UNSERVE), name])
            await self._roundtrip()

    async def _roundtrip(self) -> None:
        with contextlib.suppress(TimeoutError):
            await self._request(F.DISCOVER)

    async def _request(self, command: int) -> bytes:
        self._counter += 1
        reqid = str(self._counter).encode()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._discovers[reqid] = fut
        try:
            await self._send_frames([F.header(command), reqid])
            return await asyncio.wait_for(fut, self.connect_timeout)
        finally:
            self._discovers.pop(reqid, None)

    async def discover(self) -> list[ServiceInfo]:
        """Ask the hub for the live services."""
        if not self._connected:
            raise ConnectionError("the zmq transport is not connected")
        try:
            body = await self._request(F.DISCOVER)
        except TimeoutError:
            raise ConnectionError(f"the zmq hub at {self.endpoint} did not answer") from None
        return [ServiceInfo.from_dict(d) for d in json.loads(body) if isinstance(d, dict)]

    # ---------------------------------------------------------------- events

    async def subscribe(self, pattern: str, handler: EventHandler) -> None:
        """Subscribe with the pattern's ZeroMQ prefix; returns once the hub filters for us."""
        sub = self._sub
        if sub is None:
            raise ConnectionError("the zmq transport is not connected")
        self._subs.append((pattern, handler))
        sub.setsockopt(zmq.SUBSCRIBE, literal_prefix(pattern).encode())
        await self._sync_subscriptions()

    async def _sync_subscriptions(self) -> None:
        # Subscriptions travel in order on the SUB connection: once a marker subscribed
        # after ours comes back through the hub, ours is in force too.
        assert self._sub is not None
        self._counter += 1
        token = f"{os.getpid()}.{id(self):x}.{self._counter}".encode()
        topic = F.EVENT_CONTROL + b"sync." + token
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._syncs[topic] = fut
        self._sub.setsockopt(zmq.SUBSCRIBE, topic)
        deadline = time.monotonic() + self.connect_timeout
        try:
            while not fut.done():
                if time.monotonic() > deadline:
                    raise ConnectionError("the zmq hub did not confirm the subscription")
                await self._send_frames([F.header(F.SYNC), token])
                await asyncio.wait([fut], timeout=0.05)
        finally:
            self._syncs.pop(topic, None)
            if self._sub is not None:
                self._sub.setsockopt(zmq.UNSUBSCRIBE, topic)

    async def _sub_loop(self) -> None:
        sub = self._sub
        assert sub is not None
        shadow: zmq.Socket[bytes] = zmq.Socket.shadow(sub.underlying)
        while True:
            msg = await sub.recv_multipart()
            await self._on_event(msg)
            for _ in range(_DRAIN):
                try:
                    msg = shadow.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                await self._on_event(msg)

    async def _on_event(self, msg: list[bytes]) -> None:
        if len(msg) != 2:
            self._malformed("event with %d frames", len(msg))
            return
        topic_b, body = msg
        if topic_b[:1] == F.EVENT_CONTROL:
            fut = self._syncs.get(topic_b)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        try:
            topic = topic_b.decode()
            env = decode(body)
        except (UnicodeDecodeError, ProtocolError) as exc:
            self._malformed("bad event: %s", exc)
            return
        if env.kind != "event" or env.topic != topic:
            self._malformed("event frame topic %r does not match its envelope", topic)
            return
        for pattern, handler in self._subs:
            if matches(pattern, topic):
                try:
                    await handler(env)
                except Exception:
                    log.exception("event handler for %r raised", pattern)
            else:
                self.stats["events_filtered"] += 1

    # ---------------------------------------------------------------- receiving

    def _malformed(self, what: str, *args: object) -> None:
        self.stats["malformed"] += 1
        log.warning("zmq: malformed input: " + what, *args)

    async def _recv_loop(self) -> None:
        dealer = self._dealer
        assert dealer is not None
        shadow: zmq.Socket[bytes] = zmq.Socket.shadow(dealer.underlying)
        while True:
            msg = await dealer.recv_multipart()
            self._last_hub = time.monotonic()
            await self._on_message(msg)
            for _ in range(_DRAIN):
                try:
                    msg = shadow.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                await self._on_message(msg)

    async def _on_message(self, msg: list[bytes]) -> None:
        try:
            cmd, args = F.parse(msg, F.HUB_COMMANDS)
        except F.FrameError as exc:
            self._malformed("%s", exc)
            return
        if cmd == F.ANSWER:
            try:
                env = decode(args[0])
            except ProtocolError as exc:
                self._malformed("bad answer: %s", exc)
                return
            if env.kind in ("reply", "error") and self._on_answer is not None:
                self._on_answer(env)
            else:
                self._malformed("answer of kind %r", env.kind)
        elif cmd in F.DELIVER_KINDS:
            await self._deliver(cmd, *args)
        elif cmd == F.QUEUED:
            confirmed = self._unconfirmed.get(args[0])
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        elif cmd == F.UNREACHABLE:
            self.stats["unreachable"] += 1
            refused = self._unconfirmed.get(args[0])
            if refused is not None:          # a cast or task the hub could not take
                if not refused.done():
                    refused.set_exception(ConnectionError(args[1].decode(errors="replace")))
                return
            if self._on_answer is not None:
                self._on_answer(_unreachable(args[0].decode(errors="replace"),
                                             args[1].decode(errors="replace")))
        elif cmd == F.HEARTBEAT:
            pass
        elif cmd == F.SERVICES:
            fut = self._discovers.get(args[0])
            if fut is not None and not fut.done():
                fut.set_result(args[1])
        elif cmd == F.WELCOME:
            await self._on_welcome(args[0])
        elif cmd == F.RESET:
            log.info("zmq: the hub does not know us (restarted?); saying HELLO again")
            self.stats["reconnects"] += 1
            await self._hello()
        elif cmd == F.PUBOK:
            if self._pubok is not None and not self._pubok.done():
                self._pubok.set_result(None)
        elif cmd == F.PROTOCOL:
            msgid, reason = args[0].decode(errors="replace"), args[1].decode(errors="replace")
            log.warning("zmq: the hub refused a message: %s", reason)
            if msgid and self._on_answer is not None:
                self._on_answer(Envelope("error", re=msgid, error={
                    "code": "protocol", "type": "ProtocolError", "message": reason, "traceback": ""}))

    async def _on_welcome(self, body: bytes) -> None:
        try:
            welcome = json.loads(body)
        except ValueError:
            self._malformed("bad WELCOME")
            return
        self._hub_alive = True
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_result(welcome)
            return
        # a HELLO after a lost or restarted hub: announce our services again
        for name in list(self._served):
            info, _, prefetch = self._served[name]
            await self._send_frames([F.header(F.SERVE), name, str(prefetch).encode(),
                                     json.dumps(info.to_dict()).encode()])

    async def _deliver(self, cmd: int, service: bytes, tag: bytes, body: bytes) -> None:
        served = self._served.get(service)
        if served is None:  # unserved meanwhile: back to the hub for another replica
            await self._send_frames([_H_NACK, tag, b"1"])
            return
        try:
            env = decode(body)
            if env.kind != F.DELIVER_KINDS[cmd]:
                raise ProtocolError(f"a {env.kind!r} envelope delivered as {F.DELIVER_KINDS[cmd]!r}")
        except ProtocolError as exc:
            self._malformed("bad delivery: %s", exc)
            # "p": the hub answers the caller with a protocol error and drops the message
            await self._send_frames([_H_NACK, tag, b"p"])
            return
        await served[1](_Incoming(env, self, service, tag))

    async def _heartbeat_loop(self) -> None:
        hb = F.header(F.HEARTBEAT)
        while True:
            await asyncio.sleep(self.heartbeat)
            silent = time.monotonic() - self._last_hub
            if silent > self.heartbeat * self.liveness:
                if self._hub_alive:
                    log.warning("zmq: the hub at %s missed its heartbeats", self.endpoint)
                    self._hub_alive = False
                    for pending in self._unconfirmed.values():   # the outbox sends them again
                        if not pending.done():
                            pending.set_exception(ConnectionError("the zmq hub stopped answering"))
                self.stats["reconnects"] += 1
                await self._hello()
            else:
                await self._send_frames([hb])
