"""The hub's credit and queues: who serves what, with how many credits, and what waits.

:class:`Router` holds the peers and services and routes one item (a call, cast or task,
with its caller and message id) by the rules of docs/protocol/zmq.md §2: work is
ready-based — SERVE with ``prefetch=n`` gives a peer ``n`` credits for that service, a
delivery spends one, settling gives it back; work that finds no credit waits in the
service's queue (``max_queue``; highest priority first, FIFO within a priority:
:class:`~vertebra.transports.workqueue.WorkQueue`); calls rotate over the replicas that have credit.
Everything it answers goes out through ``send(ident, frames) -> bool`` (False: the peer
cannot be reached).  :class:`~.state.HubState` builds the protocol on top of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..workqueue import WorkQueue
from . import frames as F

__all__ = ["Item", "Peer", "Router", "Send", "Service"]

Item = tuple[int, bytes, bytes, bytes, int, int]
"""A routed message: command, caller ident, message id, envelope, deaths (how often the
worker holding it died), priority (0..9, from its priority frame; last, for the queue)."""
Send = Callable[[bytes, list[bytes]], bool]


@dataclass(slots=True, eq=False)
class Peer:
    """One bus connected to the hub (a client, a node, or both)."""

    ident: bytes
    interval: float
    liveness: int
    last_seen: float
    last_sent: float = 0.0
    serving: dict[bytes, int] = field(default_factory=dict)   # service -> prefetch
    inflight: dict[bytes, tuple[bytes, Item]] = field(default_factory=dict)  # tag -> (service, item)


@dataclass(slots=True, eq=False)
class Service:
    """One service name: its replicas in rotation order, their credit, its queue."""

    name: bytes
    workers: list[bytes] = field(default_factory=list)
    credit: dict[bytes, int] = field(default_factory=dict)  # ident -> free credits
    info: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    available: int = 0
    rr: int = 0
    queue: WorkQueue[Item] = field(default_factory=WorkQueue)


class Router:
    """Peers, services, credit and queues (see the module docstring)."""

    def __init__(self, send: Send, max_queue: int) -> None:
        self.send = send
        self.max_queue = max_queue
        self.peers: dict[bytes, Peer] = {}
        self.services: dict[bytes, Service] = {}
        self.stats: dict[str, int] = {"malformed": 0, "oversized": 0, "dropped": 0, "routed": 0}
        self._tag = 0

    def in_grace(self) -> bool:
        """Whether calls to a service nobody serves wait instead of failing (never, here)."""
        return False

    def bad(self, ident: bytes, reason: str, msgid: bytes = b"") -> None:
        """Count a malformed message and tell its sender (PROTOCOL)."""
        raise NotImplementedError

    def drop_peer(self, peer: Peer, reason: str, died: bool = True) -> None:
        """Forget a peer (``died``: it did not leave cleanly)."""
        raise NotImplementedError

    def _route(self, name: bytes, item: Item, confirm: bool = False) -> bool:
        """Deliver or queue ``item``; ``confirm``: tell a cast's or task's sender (QUEUED).
        False if it was refused (UNREACHABLE)."""
        svc = self.services.get(name)
        if svc is None or not svc.workers:
            if item[0] == F.CALL and not self.in_grace():
                self.send(item[1], [F.header(F.UNREACHABLE), item[2],
                                    b"no live replica serves " + name[:200]])
                return False
            if svc is None:
                svc = self.services[name] = Service(name)
        if not svc.available and len(svc.queue) >= self.max_queue:
            self.stats["dropped"] += 1   # the sender keeps it (UNREACHABLE) and retries later
            self.send(item[1], [F.header(F.UNREACHABLE), item[2], b"the hub's queue is full"])
            return False
        if confirm:
            self.send(item[1], [F.header(F.QUEUED), item[2]])
        if svc.available:
            self._deliver(svc, self._next_worker(svc), item)
        else:
            svc.queue.append(item)
        return True

    def _next_worker(self, svc: Service) -> bytes:
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

    def _deliver(self, svc: Service, ident: bytes, item: Item) -> None:
        svc.credit[ident] -= 1
        svc.available -= 1
        self._tag += 1
        tag = self._tag.to_bytes(8, "little")
        peer = self.peers[ident]
        peer.inflight[tag] = (svc.name, item)
        self.stats["routed"] += 1
        if not self.send(ident, [F.header(item[0]), svc.name, tag, item[3]]):
            self.drop_peer(peer, "the replica is unreachable")

    def _pump(self, svc: Service) -> None:
        while svc.queue and svc.available:
            self._deliver(svc, self._next_worker(svc), svc.queue.popleft())

    def _release(self, peer: Peer, name: bytes) -> None:
        if name not in peer.serving:
            return
        svc = self.services[name]
        svc.credit[peer.ident] += 1
        svc.available += 1
        if svc.queue:
            self._pump(svc)

    def _requeue(self, name: bytes, item: Item) -> None:
        svc = self.services.get(name)
        if svc is None:
            svc = self.services[name] = Service(name)
        svc.queue.appendleft(item)

    def _serve(self, peer: Peer, name: bytes, prefetch_b: bytes, info_b: bytes) -> None:
        try:
            prefetch = int(prefetch_b)
            if not 1 <= prefetch <= 100_000:
                raise ValueError("prefetch out of range")
            info = json.loads(info_b)
            if not isinstance(info, dict):
                raise ValueError("service info is a JSON object")
            name.decode()
        except (ValueError, UnicodeDecodeError) as exc:
            self.bad(peer.ident, f"bad SERVE: {exc}")
            return
        svc = self.services.get(name)
        if svc is None:
            svc = self.services[name] = Service(name)
        svc.info[peer.ident] = info
        if name in peer.serving:
            return
        peer.serving[name] = prefetch
        in_flight = sum(1 for n, _ in peer.inflight.values() if n == name)
        svc.workers.append(peer.ident)
        svc.credit[peer.ident] = max(0, prefetch - in_flight)
        svc.available += svc.credit[peer.ident]
        self._pump(svc)

    def _unserve(self, peer: Peer, name: bytes) -> None:
        if peer.serving.pop(name, None) is None:
            return
        svc = self.services[name]
        svc.workers.remove(peer.ident)
        svc.available -= svc.credit.pop(peer.ident)
        svc.info.pop(peer.ident, None)
        svc.rr = 0
        if not svc.workers and not self.in_grace():
            self._fail_queued_calls(svc)
            if not svc.queue:
                del self.services[name]

    def _fail_queued_calls(self, svc: Service) -> None:
        for item in svc.queue.take_if(lambda it: it[0] == F.CALL):
            self.send(item[1], [F.header(F.UNREACHABLE), item[2],
                                b"no live replica serves " + svc.name[:200]])

    def _directory(self) -> bytes:
        out = []
        for svc in self.services.values():
            if not svc.workers:
                continue
            info = dict(next(iter(svc.info.values()), {}))
            info.pop("direct", None)        # per replica: ROUTES tells it (_replicas)
            info["name"] = svc.name.decode()
            info["replicas"] = len(svc.workers)
            info["transport"] = "zmq"
            out.append(info)
        return json.dumps(out).encode()

    def _replicas(self, name: bytes) -> bytes:
        """The live replicas of ``name`` for direct calls: ``{"replicas": n, "direct":
        [{"endpoint", "key", "prefetch"}, ...]}``, the replicas that announced a direct
        endpoint in SERVE, in rotation order (a caller goes direct only when all of them did)."""
        svc = self.services.get(name)
        workers = svc.workers if svc is not None else []
        direct = []
        for ident in workers:
            assert svc is not None
            ep = svc.info.get(ident, {}).get("direct")
            peer = self.peers.get(ident)
            if isinstance(ep, dict) and isinstance(ep.get("endpoint"), str) and peer is not None:
                direct.append({"endpoint": ep["endpoint"], "key": str(ep.get("key") or ""),
                               "prefetch": peer.serving.get(name, 1)})
        return json.dumps({"replicas": len(workers), "direct": direct}).encode()
