"""Events: groupchat messages in the events room ``ROOM-events@MUC``.

A bus joins the room on its first publish or subscribe (and again after a reconnect);
every occupant gets every event and applies the ``*``/``#`` patterns itself.  Room history
(messages with a ``<delay/>``) is ignored: an event is delivered live or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from ...eager import start_eagerly
from ...wire.codec import decode
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError
from ...wire.topics import matches
from ..base import EventHandler
from . import stanzas

if TYPE_CHECKING:
    from .transport import XmppTransport

__all__ = ["Events"]

log = logging.getLogger("vertebra.transports.xmpp")


class Events:
    """Publishing to and subscribing in the events room."""

    def __init__(self, t: XmppTransport) -> None:
        self.t = t
        self.room = f"{t.opts.room}-events@{t.opts.muc}"
        self._subs: list[tuple[str, EventHandler]] = []
        self._in_room = False
        self._joined: asyncio.Future[None] | None = None

    def _send_join(self) -> None:
        self.t.send_xml(f"<presence to='{self.room}/{escape(self.t.nick)}'>"
                        f"<x xmlns='{stanzas.NS_MUC}'><history maxstanzas='0'/></x></presence>")

    def online(self) -> None:
        """(Re)connected: rejoin the room if we were in it."""
        if self._in_room:
            self._send_join()

    def offline(self) -> None:
        """Connection lost: no longer in the room until we rejoin."""
        if self._in_room:
            self._joined = asyncio.get_running_loop().create_future()

    async def join(self) -> None:
        """Join the events room (once); ConnectionError when that fails within 10 s."""
        if not self._in_room:
            self._in_room = True
            self._joined = asyncio.get_running_loop().create_future()
            self._send_join()
        if self._joined is not None and not self._joined.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._joined), 10)
            except TimeoutError as exc:
                raise ConnectionError("could not join the events room") from exc

    def on_presence(self, xml: ET.Element, nick: str) -> None:
        """A presence from the events room: ours means we are in."""
        if nick == self.t.nick and xml.get("type") not in ("unavailable", "error") \
                and self._joined is not None and not self._joined.done():
            self._joined.set_result(None)

    async def publish(self, env: Envelope) -> None:
        """Send ``env`` (an event) to every occupant of the events room."""
        data = self.t.encode(env)
        await self.join()
        body = stanzas.env_element(data)
        if not self.t.send_xml(f"<message type='groupchat' to='{self.room}'>{body}</message>"):
            raise ConnectionError("xmpp transport is not connected")

    async def subscribe(self, pattern: str, handler: EventHandler) -> None:
        """Receive events matching ``pattern`` (joins the events room once)."""
        self._subs.append((pattern, handler))
        await self.join()

    def on_message(self, xml: ET.Element) -> None:
        """A groupchat message from the events room."""
        if xml.find(f"{{{stanzas.NS_DELAY}}}delay") is not None:
            return   # room history, not a live event
        try:
            data = stanzas.env_of(xml)
            if data is None:
                return
            env = decode(data)
        except (ValueError, ProtocolError) as exc:
            self.t.stats["malformed"] += 1
            log.warning("%s: malformed event: %s", self.t.jid, exc)
            return
        if env.kind != "event":
            self.t.stats["malformed"] += 1
            return
        for pattern, handler in self._subs:
            if matches(pattern, env.topic):
                start_eagerly(self._run(handler, env), self.t.tasks)

    async def _run(self, handler: EventHandler, env: Envelope) -> None:
        try:
            await handler(env)
        except Exception:
            log.exception("%s: event handler failed", self.t.jid)
