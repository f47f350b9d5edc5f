"""zmq:// — the ZeroMQ transport: every bus talks to one hub (:mod:`.hub`).

Capability sheet
----------------
Guarantees
  * Calls go straight from the caller to a replica's own endpoint (:mod:`.direct_calls`,
    :mod:`.endpoint`), to the replica with the fewest of the caller's calls in flight,
    never past its prefetch; the hub tells the replicas (ROUTES) and stays the fallback:
    client DEALER -> hub ROUTER -> node DEALER and back, where the hub rotates calls over
    the live replicas that have credit (``direct=0`` sends every call that way).
  * A call to a service with no live replica, or in flight to a replica that dies or
    closes, is answered UNREACHABLE at once (by the hub, or on the direct path by the
    caller, which sees the replica's connection drop), never left to the deadline.
  * Casts and tasks are ready-based (credit = ``prefetch``), wait in the hub highest
    ``priority`` first (FIFO within a priority), and are at-least-once while the hub
    runs: a replica that dies (heartbeats) or closes before acking has its work sent to
    another replica.  A send counts once the hub holds it (QUEUED, a bounded wait);
    a re-send of what the hub already took is confirmed, not queued twice.
  * While the hub is away (not yet reached, reconnecting, restarting) ``send`` raises
    ConnectionError at once, so the Bus and the outbox retry: nothing is queued inside
    libzmq to arrive twice later.  A bus that finds a restarted hub says HELLO again and
    re-announces its services; waits for the old hub fail with ConnectionError.
  * A streamed call's ``item`` and ``beat`` answers come back through the hub like its
    reply, in the order the node sent them; only the final reply or error settles it.
  * Dead letters live in the hub: a task its node buries (BURY) is kept with its error,
    listed by ``dead_letters`` and sent back by ``replay`` (both requests to the hub).
  * Events: publisher PUB -> hub XSUB/XPUB -> subscriber SUB; the ZeroMQ prefix filter
    does the coarse cut (at the hub), the full ``*``/``#`` match runs before a handler.
  * CurveZMQ when the URL carries ``server_key`` (and a client key pair).
Cannot
  * Tasks and dead letters live in the hub's memory: a hub restart loses what it held
    (durable_tasks=False).
  * Events are fire-and-forget: a subscriber that is not connected misses them.
  * A call in flight to a replica that dies, or to a hub that dies, is not retried
    (UNREACHABLE, or CallTimeout at its deadline).

URL options: :mod:`.options` (docs/transports/zmq.md).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ...wire.codec import Codec, codec_of, decode
from ...wire.deadletter import DeadLetter
from ...wire.envelope import ANSWERS, Envelope
from ...wire.errors import ProtocolError, wire_error
from ...wire.info import ServiceInfo
from ..base import AnswerCallback, Capabilities, EventHandler, Handler, Transport
from . import frames as F
from .connection import HubLink
from .direct_calls import DirectCalls
from .endpoint import DirectEndpoint, DirectIncoming
from .events import EventLink
from .incoming import ZmqIncoming
from .options import DEFAULT_MAX_MESSAGE_SIZE, ZmqOptions

__all__ = ["ZmqTransport"]

log = logging.getLogger("vertebra.transports.zmq")

_KIND_HEADER = {"call": F.header(F.CALL), "cast": F.header(F.CAST), "task": F.header(F.TASK)}
_H_NACK, _H_REPLY = F.header(F.NACK), F.header(F.REPLY)


class ZmqTransport(Transport):
    """A bus's connection to a zmq:// hub (see the module docstring)."""

    scheme = "zmq"
    capabilities = Capabilities(durable_tasks=False, task_redelivery=True, fast_unreachable=True,
                                multi_process=True, max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                                priorities=True)

    def __init__(self, url: str, codec: Codec) -> None:
        super().__init__(url, codec)
        self.opts = ZmqOptions.parse(url)
        self.endpoint = self.opts.endpoint
        self.max_message_size = self.opts.max_message_size
        self.stats.update({"oversized": 0, "unreachable": 0, "events_filtered": 0,
                           "confirm_timeouts": 0, "hub_restarts": 0, "hub_calls": 0})
        self.link = HubLink(self.opts, self.stats, self._on_hub_message, self._on_rewelcome)
        self.events = EventLink(self.link, self._malformed, self.stats)
        self._on_answer: AnswerCallback | None = None
        self.direct = DirectCalls(self.link, self.stats, self._answer) if self.opts.direct else None
        self._endpoint: DirectEndpoint | None = None
        self._served: dict[bytes, tuple[ServiceInfo, Handler, int]] = {}
        self._connected = False
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    async def connect(self, on_answer: AnswerCallback) -> None:
        """Say HELLO to the hub and open the event sockets; ConnectionError if it does not answer."""
        if self._connected:
            return
        self._on_answer = on_answer
        welcome = await self.link.open()
        self.events.open(welcome)
        if self.direct is not None:
            self.direct.start()
        self._connected = True

    def _answer(self, env: Envelope) -> None:
        if self._on_answer is not None:
            self._on_answer(env)

    async def close(self) -> None:
        """Say BYE (the hub requeues our unacked work) and close the sockets."""
        if self._closed:
            return
        self._closed = True
        self._connected = False
        if self._endpoint is not None:
            await self._endpoint.close()
        if self.direct is not None:
            await self.direct.close()
        await self.events.close()
        await self.link.close()
        self.link.term()

    def _check(self) -> None:
        if not self._connected:
            raise ConnectionError("the zmq transport is not connected")
        if not self.link.up:
            raise ConnectionError(f"the zmq hub at {self.endpoint} is not connected (reconnecting)")

    # ---------------------------------------------------------------- sending

    async def send(self, env: Envelope) -> None:
        """Route a call, cast or task through the hub, or publish an event."""
        head = _KIND_HEADER.get(env.kind)
        if head is None and env.kind != "event":
            raise ProtocolError(f"cannot send a {env.kind!r} envelope")
        body = self.codec.encode(env)
        if len(body) > self.max_message_size:
            self.stats["oversized"] += 1
            raise ProtocolError(f"{env.kind} of {len(body)} bytes is over the maximum of "
                                f"{self.max_message_size} (max_message_size)")
        self._check()
        if head is None:
            await self.events.publish(env.topic, body)
            return
        msgid = env.id.encode()
        frames = [head, env.service.encode(), msgid, body]
        if env.priority:   # the hub orders its queue by this frame; absent means 0
            frames.insert(3, _priority_frame(env.priority))
        if env.kind == "call":
            if self.direct is not None and await self.direct.send(env.service, msgid, frames,
                                                                  env.deadline):
                return
            self.stats["hub_calls"] += 1
            await self.link.send(frames)
            return
        # A cast or task is sent once the hub holds it (QUEUED), like a publisher confirm:
        # until then only this process has it, so the outbox (and its spool) must keep it.
        await self.link.send_confirmed(frames, msgid)

    # ---------------------------------------------------------------- serving

    async def serve(self, info: ServiceInfo, handler: Handler, prefetch: int = 16) -> None:
        """Announce ``info`` to the hub and take up to ``prefetch`` deliveries at a time."""
        self._check()
        if self.opts.direct and self._endpoint is None:
            assert self.link.ctx is not None
            endpoint = DirectEndpoint(self.link.ctx, self.opts, self.stats, self._deliver_direct)
            await endpoint.open(self.link.welcome.get("allow"))
            self._endpoint = endpoint
        name = info.name.encode()
        self._served[name] = (info, handler, max(1, prefetch))
        await self.link.send(self._serve_frames(name))
        await self._roundtrip()  # the hub has the SERVE once it answers a later request

    def _serve_frames(self, name: bytes) -> list[bytes]:
        info, _, prefetch = self._served[name]
        announced = info.to_dict()
        if self._endpoint is not None:
            announced["direct"] = self._endpoint.announce
        return [F.header(F.SERVE), name, str(prefetch).encode(), json.dumps(announced).encode()]

    async def unserve(self, service: str) -> None:
        """Leave routing for ``service``; deliveries still arriving are handed back."""
        name = service.encode()
        if self._served.pop(name, None) is not None and self._connected and self.link.up:
            await self.link.send([F.header(F.UNSERVE), name])
            await self._roundtrip()

    async def _roundtrip(self) -> None:
        try:
            await self.link.request(F.DISCOVER)
        except ConnectionError:
            pass   # the link went down meanwhile: a new WELCOME re-announces what we serve

    async def discover(self) -> list[ServiceInfo]:
        """Ask the hub for the live services."""
        self._check()
        (body,) = await self.link.request(F.DISCOVER)
        return [ServiceInfo.from_dict(d) for d in json.loads(body) if isinstance(d, dict)]

    async def subscribe(self, pattern: str, handler: EventHandler) -> None:
        """Subscribe with the pattern's ZeroMQ prefix; returns once the hub filters for us."""
        self._check()
        await self.events.subscribe(pattern, handler)

    # ---------------------------------------------------------------- dead letters

    async def _dead_pages(self, service: str) -> list[tuple[bytes, DeadLetter]]:
        out: list[tuple[bytes, DeadLetter]] = []
        cursor: Any = 0
        while cursor is not None:
            head, *rest = await self.link.request(F.DEAD, service.encode(), str(cursor).encode())
            cursor = json.loads(head).get("next")
            for i in range(0, len(rest), F.GROUPS[F.DEAD_LETTERS]):
                msgid, error, body = rest[i:i + 3]
                try:
                    env = decode(body)
                    err = json.loads(error)
                except (ProtocolError, ValueError) as exc:
                    self._malformed("bad dead letter of %s: %s", service, exc)
                    continue
                out.append((msgid, DeadLetter.of(env, err if isinstance(err, dict) else None)))
        return out

    async def dead_letters(self, service: str) -> list[DeadLetter]:
        """The tasks of ``service`` buried in the hub, oldest first."""
        self._check()
        return [d for _, d in await self._dead_pages(service)]

    async def replay(self, service: str, ids: list[str] | None = None) -> int:
        """Send buried tasks of ``service`` back to its queue as first attempts; each one
        leaves the hub's dead letters in the same step as it is queued again."""
        self._check()
        wanted = None if ids is None else set(ids)
        n = 0
        for msgid, dead in await self._dead_pages(service):
            if wanted is not None and dead.id not in wanted:
                continue
            again = dead.replay_envelope()
            extra = [_priority_frame(again.priority)] if again.priority else []
            (done,) = await self.link.request(F.REPLAY, service.encode(), msgid, *extra,
                                              self.codec.encode(again))
            n += done == b"1"
        return n

    # ---------------------------------------------------------------- from the hub

    def _malformed(self, what: str, *args: object) -> None:
        self.link.malformed(what, *args)

    async def _on_rewelcome(self, welcome: dict[str, Any], restarted: bool) -> None:
        # the hub lost sight of us, or it is a new hub: announce our services again
        self.events.rewire(welcome, restarted)
        if self._endpoint is not None:
            self._endpoint.allow(welcome.get("allow"))
        for name in list(self._served):
            try:
                await self.link.send(self._serve_frames(name))
            except ConnectionError:
                return   # down again already: the next WELCOME does it

    async def _on_hub_message(self, cmd: int, args: list[bytes]) -> None:
        if cmd in F.DELIVER_KINDS:
            await self._deliver(cmd, *args)
        elif cmd == F.ANSWER:
            try:
                env = decode(args[0])
            except ProtocolError as exc:
                self._malformed("bad answer: %s", exc)
                return
            if env.kind in ANSWERS and self._on_answer is not None:
                self._on_answer(env)
            else:
                self._malformed("answer of kind %r", env.kind)
        elif cmd == F.UNREACHABLE:
            self.stats["unreachable"] += 1
            if self._on_answer is not None:
                self._on_answer(Envelope("error", re=args[0].decode(errors="replace"), error=wire_error(
                    "unreachable", "Unreachable", args[1].decode(errors="replace"))))
        elif cmd == F.PUBOK:
            self.events.on_pubok()
        elif cmd == F.PROTOCOL:
            msgid, reason = args[0].decode(errors="replace"), args[1].decode(errors="replace")
            log.warning("zmq: the hub refused a message: %s", reason)
            if msgid and self._on_answer is not None:
                self._on_answer(Envelope("error", re=msgid,
                                         error=wire_error("protocol", "ProtocolError", reason)))

    async def _deliver(self, cmd: int, service: bytes, tag: bytes, body: bytes) -> None:
        served = self._served.get(service)
        if served is None:  # unserved meanwhile: back to the hub for another replica (and
            # say UNSERVE again: an UNSERVE that could not be sent leaves us in its routing)
            await self.link.send([F.header(F.UNSERVE), service], wait=self.opts.confirm_timeout)
            await self.link.send([_H_NACK, tag, b"1"], wait=self.opts.confirm_timeout)
            return
        codec = codec_of(body)   # answers: the call's
        try:
            env = decode(body)
            if env.kind != F.DELIVER_KINDS[cmd]:
                exc = ProtocolError(f"a {env.kind!r} envelope delivered as {F.DELIVER_KINDS[cmd]!r}")
                exc.envelope_id, exc.reply_to = env.id, env.reply_to
                raise exc
        except ProtocolError as exc:
            self._malformed("bad delivery: %s", exc)
            if cmd == F.CALL and exc.envelope_id:
                # PROTOCOL.md §5: a call whose id can be read is answered with an error of
                # code "protocol" (the REPLY settles the delivery)
                answer = Envelope("error", re=exc.envelope_id, reply_to=exc.reply_to,
                                  error=wire_error("protocol", "ProtocolError", str(exc)))
                await self.link.send([_H_REPLY, tag, codec.encode(answer)], wait=self.opts.confirm_timeout)
                return
            # "p": no id to answer with; the hub answers a call with an error envelope
            # (code "protocol", re = the CALL's message-id frame) and drops a cast or task
            await self.link.send([_H_NACK, tag, b"p"], wait=self.opts.confirm_timeout)
            return
        await served[1](ZmqIncoming(env, self.link, codec, tag))


    async def _deliver_direct(self, caller: bytes, service: bytes, msgid: bytes, body: bytes) -> None:
        """A CALL that came to our own endpoint (:mod:`.endpoint`)."""
        endpoint = self._endpoint
        assert endpoint is not None
        served = self._served.get(service)
        if served is None:            # not (any more) ours: the caller goes through the hub
            await endpoint.redirect(caller, msgid)
            return
        codec = codec_of(body)
        try:
            if len(body) > self.max_message_size:
                raise ProtocolError(f"message of {len(body)} bytes is over the maximum of "
                                    f"{self.max_message_size}")
            env = decode(body)
            if env.kind != "call":
                raise ProtocolError(f"a {env.kind!r} envelope sent as a call")
        except ProtocolError as exc:
            self._malformed("bad direct call: %s", exc)
            # PROTOCOL.md §5: answered with an error of code "protocol", re = the CALL's
            # message-id frame (as the hub does for a call its node could not decode)
            answer = Envelope("error", re=msgid.decode("utf-8", "replace"),
                              error=wire_error("protocol", "ProtocolError", str(exc)))
            await endpoint.send(caller, [F.header(F.ANSWER), codec.encode(answer)])
            return
        self.stats["direct_served"] += 1
        await served[1](DirectIncoming(env, endpoint, codec, caller, msgid))


def _priority_frame(priority: int) -> bytes:
    try:
        return F.priority_frame(priority)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
