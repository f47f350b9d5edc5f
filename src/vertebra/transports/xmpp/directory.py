"""Who serves what: the directory room (XEP-0045 MUC) and the presences in it.

Every bus joins ``ROOM@MUC`` with a presence whose ``<node xmlns='urn:vertebra:presence:1'/>``
lists the services it serves, its full JID and its load.  The replicas of a service are
the occupants announcing it.  Besides the live replicas the directory remembers two things
that routing needs:

* which services were live a moment ago: for ``grace`` seconds after a replica of a
  service left, or after this bus (re)joined the room having known the service before,
  a call to it waits for a replica instead of failing ``Unreachable`` at once (a restart,
  a reconnect: "no replica" is not known for sure yet);
* which accounts (bare JIDs) served a service: where its dead letters are kept
  (:mod:`.deadletters`).

The bus holding the network's gateway (:mod:`.gateway`) says so in its ``<node/>``
(``gateway='DOMAIN'``); when it leaves, the other buses that may hold it try at once, and
discovery shows each service's stable address ``S@DOMAIN`` in ``extra["jid"]``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from ...wire.info import ServiceInfo
from . import stanzas

if TYPE_CHECKING:
    from .transport import XmppTransport

__all__ = ["Directory", "Peer"]

log = logging.getLogger("vertebra.transports.xmpp")


@dataclass(slots=True)
class Peer:
    """One occupant of the directory room that announced itself."""

    jid: str
    load: int
    services: dict[str, dict[str, Any]]
    gateway: str = ""


class Directory:
    """The directory room: our own presence in it, and everybody else's."""

    def __init__(self, t: XmppTransport) -> None:
        self.t = t
        self.room = f"{t.opts.room}@{t.opts.muc}"
        self.peers: dict[str, Peer] = {}                 # room nick -> peer
        self.accounts: dict[str, set[str]] = collections.defaultdict(set)
        self._joined: asyncio.Future[None] | None = None
        self._reflected: asyncio.Future[None] | None = None
        self._presence_pending = False
        self._rr = itertools.count()
        self._fresh: dict[str, float] = {}               # service -> monotonic time
        self._known: set[str] = set()                    # services known before going offline

    # -- our own presence -------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        """Whether we are in the room (and so know every replica in it)."""
        return self._joined is not None and self._joined.done()

    def reset(self) -> None:
        """Not in the room (before connecting, after losing the connection)."""
        self._joined = asyncio.get_running_loop().create_future()

    async def wait_joined(self, timeout: float) -> None:
        """Wait until we are in the room; ConnectionError after ``timeout``."""
        assert self._joined is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._joined), timeout)
        except TimeoutError as exc:
            raise ConnectionError(f"could not join the directory room {self.room}") from exc

    def online(self) -> None:
        """(Re)connected: join the room; the peers are learnt anew."""
        self.peers.clear()
        self.send_presence(join=True)

    def offline(self) -> None:
        """Connection lost: forget the peers, remember which services there were."""
        self._known.update(name for p in self.peers.values() for name in p.services)
        self.peers.clear()
        self.reset()

    def send_presence(self, join: bool = False) -> None:
        """Announce our services and load (joining the room when ``join``)."""
        muc = f"<x xmlns='{stanzas.NS_MUC}'><history maxstanzas='0'/></x>" if join else ""
        gw = self.t.gateway
        node = stanzas.presence_node(self.t.jid, self.t.serving.load(), self.t.serving.infos(),
                                     gw.domain if gw.holding else "")
        self.t.send_xml(f"<presence to='{self.room}/{escape(self.t.nick)}'>{muc}{node}</presence>")

    def presence_soon(self) -> None:
        """Advertise a changed load, at most every 50 ms."""
        if self._presence_pending:
            return
        self._presence_pending = True

        def fire() -> None:
            self._presence_pending = False
            self.send_presence()
        asyncio.get_running_loop().call_later(0.05, fire)

    async def announce(self) -> None:
        """Send our presence and wait until the room reflects it (so others have it too)."""
        self._reflected = asyncio.get_running_loop().create_future()
        self.send_presence()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reflected), 5)

    # -- everybody's presence ---------------------------------------------------------------

    def on_presence(self, xml: ET.Element, nick: str) -> None:
        """A presence from ``ROOM@MUC/nick``."""
        if xml.get("type") == "unavailable":
            peer = self.peers.pop(nick, None)
            if peer is not None:
                self._left(peer)
            return
        if xml.get("type") == "error":
            log.warning("%s: presence error from %s/%s: %s", self.t.jid, self.room, nick,
                        stanzas.error_condition(xml))
            return
        node = stanzas.node_of(xml)
        if node is not None:
            jid, load, services, gateway = node
            old = self.peers.get(nick)
            peer = self.peers[nick] = Peer(jid, load, {str(s.get("name")): s for s in services},
                                           gateway)
            if old is not None and old.jid != jid:
                self._left(old)
            elif old is not None and old.gateway and not gateway:
                self.t.gateway.wake()           # its holder let the gateway go
            bare = jid.split("/", 1)[0]
            for name in peer.services:
                self.accounts[name].add(bare)
                self.t.outgoing.replica_up(name)
        if nick != self.t.nick:
            return
        if self._reflected is not None and not self._reflected.done():
            self._reflected.set_result(None)
        if self._joined is not None and not self._joined.done():
            self._joined.set_result(None)
            until = time.monotonic() + self.t.opts.grace
            for name in self._known:
                self._fresh[name] = until
            self._known.clear()
            self.t.outgoing.rejoined()
            self.t.gateway.wake()

    def _left(self, peer: Peer) -> None:
        until = time.monotonic() + self.t.opts.grace
        for name in peer.services:
            self._fresh[name] = until
        self.t.outgoing.target_gone(peer.jid)
        if peer.gateway:
            self.t.gateway.wake()               # its holder is gone: somebody take it

    # -- questions routing asks -------------------------------------------------------------

    def choose(self, service: str, exclude: set[str], in_flight: collections.Counter[str]) -> str:
        """The least busy replica of ``service`` not in ``exclude`` ("" when none)."""
        best: list[str] = []
        score = 1 << 62
        for peer in self.peers.values():
            if service not in peer.services or peer.jid in exclude:
                continue
            sc = peer.load + in_flight[peer.jid]
            if sc < score:
                best, score = [peer.jid], sc
            elif sc == score:
                best.append(peer.jid)
        if not best:
            return ""
        return best[next(self._rr) % len(best)]

    def has_replica(self, service: str) -> bool:
        """Whether any occupant serves ``service`` now."""
        return any(service in p.services for p in self.peers.values())

    def present(self, jid: str) -> bool:
        """Whether the full JID ``jid`` is in the room."""
        return any(p.jid == jid for p in self.peers.values())

    def recently_live(self, service: str) -> bool:
        """Whether ``service`` had a replica within the last ``grace`` seconds (see above)."""
        return time.monotonic() < self._fresh.get(service, 0.0)

    def service(self, name: str) -> ServiceInfo | None:
        """How a live replica of ``name`` describes it (None: no replica now)."""
        for peer in self.peers.values():
            d = peer.services.get(name)
            if d is not None:
                return ServiceInfo.from_dict(d)
        return None

    def gateway(self) -> str:
        """The gateway domain some bus in the room holds ("" when none does)."""
        return next((p.gateway for p in self.peers.values() if p.gateway), "")

    def discover(self) -> list[ServiceInfo]:
        """Services announced in the room, replicas counted."""
        found: dict[str, tuple[dict[str, Any], int]] = {}
        for peer in self.peers.values():
            for name, d in peer.services.items():
                first, n = found.get(name, (d, 0))
                found[name] = (first, n + 1)
        out = []
        gateway = self.gateway()
        for name, (d, n) in found.items():
            info = ServiceInfo.from_dict(d)
            extra = {**info.extra, "jid": f"{name}@{gateway}"} if gateway else info.extra
            out.append(ServiceInfo(name, info.methods, info.doc, n, self.t.scheme, extra))
        return out
