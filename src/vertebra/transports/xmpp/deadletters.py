"""Dead letters, kept on the server: a PubSub node per service in the account's PEP.

XMPP has no task queue, so a buried task must be kept where it outlives every bus: the
server.  The replica that buries a task publishes it (XEP-0060 over XEP-0163 PEP) to the
node ``vertebra.dead/<room>/<service>`` of its own account (``room``: the directory room's
name, so that separate vertebra networks on one server keep separate dead letters), item
id = envelope id:

    <item id='ID'><dead xmlns='urn:vertebra:dead:1' at='UNIX-TIME'>BASE64(envelope)</dead></item>

The envelope is the task as last delivered, its last error in the ``dead-error`` header
(:mod:`vertebra.wire.deadletter`).  The node is created on first publish with
``persist_items``, ``max_items=max``, ``access_model=open`` (anyone may list) and
``publish_model=open``.  Why PEP and not a PubSub component: Prosody's component lets only
its admins create nodes (or publish to one they do not own), while in PEP every account
owns its nodes, and the replicas of a service are the resources of its account(s).

* list: the items of that node in every account known to serve the service (live
  replicas', those seen earlier, and ``<service>@<domain>``), oldest first;
* replay: each chosen letter is sent again as a first attempt (with a ``replay`` token,
  :data:`.inflight.REPLAY_HEADER`) to a live replica, then removed: retracted when the node
  is ours, else overwritten with a ``<replayed/>`` tombstone (only an owner may retract;
  listing skips tombstones and the owner retracts them when it lists).  ``replay`` returns
  once the tasks are with a replica; the replaying bus keeps them (re-routes them if that
  replica vanishes) until they are acknowledged or it closes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from ...eager import start_eagerly
from ...wire.codec import decode
from ...wire.deadletter import DEAD_ERROR_HEADER, DeadLetter
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError
from .inflight import REPLAY_HEADER, Out
from .stanzas import NS_PUBSUB, IqError

if TYPE_CHECKING:
    from .transport import XmppTransport

__all__ = ["NS_DEAD", "DeadLetters", "node_name"]

log = logging.getLogger("vertebra.transports.xmpp")

NS_DEAD = "urn:vertebra:dead:1"
_NO_NODE = frozenset({"item-not-found", "forbidden"})   # PEP answers forbidden for a missing node


def node_name(room: str, service: str) -> str:
    """The PEP node that keeps the dead letters of ``service`` in the network ``room``."""
    return f"vertebra.dead/{room}/{service}"


def _field(var: str, value: str) -> str:
    return f"<field var='{var}'><value>{value}</value></field>"


_PUBLISH_OPTIONS = (
    "<publish-options><x xmlns='jabber:x:data' type='submit'>"
    "<field var='FORM_TYPE' type='hidden'>"
    "<value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
    + _field("pubsub#persist_items", "true") + _field("pubsub#max_items", "max")
    + _field("pubsub#access_model", "open") + _field("pubsub#publish_model", "open")
    + "</x></publish-options>")


class DeadLetters:
    """Bury, list and replay dead letters in PEP nodes."""

    def __init__(self, t: XmppTransport) -> None:
        self.t = t

    def _node(self, service: str) -> str:
        return node_name(self.t.opts.room, service)

    async def bury(self, env: Envelope, error: dict[str, Any] | None) -> bool:
        """Keep ``env`` as a dead letter of its service; False (logged) when the server
        refused it; ConnectionError when the connection is down (nothing was kept)."""
        err = DeadLetter.of(env, error).error
        kept = dataclasses.replace(env, kind="task",
                                   headers={**env.headers, DEAD_ERROR_HEADER: json.dumps(err)})
        payload = base64.b64encode(self.t.codec.encode(kept)).decode("ascii")
        item = (f"<item id={quoteattr(env.id)}><dead xmlns='{NS_DEAD}' at='{time.time():.6f}'>"
                f"{payload}</dead></item>")
        publish = f"<publish node={quoteattr(self._node(env.service))}>{item}</publish>"
        try:
            try:
                await self.t.request("set", f"<pubsub xmlns='{NS_PUBSUB}'>{publish}"
                                            f"{_PUBLISH_OPTIONS}</pubsub>")
            except IqError as exc:
                if exc.condition != "conflict":     # precondition-not-met: configured otherwise
                    raise
                await self.t.request("set", f"<pubsub xmlns='{NS_PUBSUB}'>{publish}</pubsub>")
        except IqError as exc:
            self.t.stats["bury_failed"] += 1
            log.error("%s: the server refused to keep task %s.%s (%s) in PEP node %s: %s; "
                      "it is dropped (last error %s: %s)", self.t.jid, env.service, env.method,
                      env.id, self._node(env.service), exc, err["type"], err["message"])
            return False
        self.t.stats["buried"] += 1
        log.warning("%s: buried task %s.%s (%s) after %d attempt(s): %s: %s", self.t.jid,
                    env.service, env.method, env.id, DeadLetter.of(env, err).attempts,
                    err["type"], err["message"])
        return True

    async def letters(self, service: str) -> list[DeadLetter]:
        """The dead letters of ``service``, oldest first."""
        return [d for _, d in await self._found(service)]

    async def replay(self, service: str, ids: list[str] | None) -> int:
        """Send dead letters back as first attempts, remove them; how many were sent."""
        found = await self._found(service)
        if ids is not None:
            wanted = set(ids)
            found = [(a, d) for a, d in found if d.id in wanted]
        if not found:
            return 0
        await self.t.outgoing.await_replica(service)   # no queue to put them in: Unreachable
        outs: list[Out] = []
        for account, letter in found:
            env = letter.replay_envelope()
            env.headers[REPLAY_HEADER] = os.urandom(6).hex()
            outs.append(self.t.outgoing.hand_over(env))
            await self._remove(account, service, letter.id)
        return len(outs)

    # -- reading ----------------------------------------------------------------------------

    def _accounts(self, service: str) -> list[str]:
        d = self.t.directory
        accounts = [p.jid.split("/", 1)[0] for p in d.peers.values() if service in p.services]
        accounts += sorted(d.accounts.get(service, ()))
        if service in self.t.serving.served:
            accounts.append(self.t.opts.bare)
        accounts.append(f"{service}@{self.t.opts.domain}")
        return list(dict.fromkeys(a.lower() for a in accounts))

    async def _found(self, service: str) -> list[tuple[str, DeadLetter]]:
        seen: dict[str, tuple[float, str, DeadLetter]] = {}
        for account in self._accounts(service):
            tombstones = []
            for at, item_id, letter in await self._items(account, service):
                if letter is None:
                    tombstones.append(item_id)
                elif item_id not in seen:
                    seen[item_id] = (at, account, letter)
            if tombstones and account == self.t.opts.bare.lower():
                start_eagerly(self._retract(service, tombstones), self.t.tasks)
        return [(a, d) for _, a, d in sorted(seen.values(), key=lambda x: x[0])]

    async def _items(self, account: str, service: str) -> list[tuple[float, str, DeadLetter | None]]:
        body = f"<pubsub xmlns='{NS_PUBSUB}'><items node={quoteattr(self._node(service))}/></pubsub>"
        try:
            answer = await self.t.request("get", body, to=account)
        except IqError as exc:
            if exc.condition in _NO_NODE:
                return []
            raise ConnectionError(f"cannot read the dead letters of {service!r} at {account}: "
                                  f"{exc} (does the server offer PEP, mod_pep?)") from exc
        out: list[tuple[float, str, DeadLetter | None]] = []
        for item in answer.iter(f"{{{NS_PUBSUB}}}item"):
            item_id = item.get("id", "")
            if item.find(f"{{{NS_DEAD}}}replayed") is not None:
                out.append((0.0, item_id, None))
                continue
            el = item.find(f"{{{NS_DEAD}}}dead")
            if el is None:
                continue
            try:
                env = decode(base64.b64decode((el.text or "").strip(), validate=True))
                error = json.loads(env.headers.get(DEAD_ERROR_HEADER, "{}"))
                at = float(el.get("at", "0"))
            except (binascii.Error, ValueError, ProtocolError) as exc:
                self.t.stats["malformed"] += 1
                log.warning("%s: unreadable dead letter %s in %s at %s: %s", self.t.jid, item_id,
                            self._node(service), account, exc)
                continue
            headers = {k: v for k, v in env.headers.items() if k != DEAD_ERROR_HEADER}
            env = dataclasses.replace(env, headers=headers)
            out.append((at, item_id, DeadLetter.of(env, error if isinstance(error, dict) else None)))
        return out

    # -- removing ---------------------------------------------------------------------------

    async def _remove(self, account: str, service: str, item_id: str) -> None:
        node = quoteattr(self._node(service))
        if account == self.t.opts.bare.lower():
            body = (f"<pubsub xmlns='{NS_PUBSUB}'><retract node={node}>"
                    f"<item id={quoteattr(item_id)}/></retract></pubsub>")
            to = ""
        else:
            body = (f"<pubsub xmlns='{NS_PUBSUB}'><publish node={node}><item id={quoteattr(item_id)}>"
                    f"<replayed xmlns='{NS_DEAD}'/></item></publish></pubsub>")
            to = account
        try:
            await self.t.request("set", body, to=to)
        except (IqError, ConnectionError) as exc:
            log.warning("%s: replayed dead letter %s of %s, but could not remove it at %s: %s",
                        self.t.jid, item_id, service, account, exc)

    async def _retract(self, service: str, item_ids: list[str]) -> None:
        for item_id in item_ids:
            await self._remove(self.t.opts.bare.lower(), service, item_id)
