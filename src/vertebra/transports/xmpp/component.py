"""One XEP-0114 (Jabber Component Protocol) connection: the handshake, then every stanza
the server routes to the component's domain in, and raw XML out.

Written on asyncio streams with an incremental ElementTree parser (slixmpp's
ComponentXMPP brings a roster and answers probes of its own).  The server refuses a second
connection for a domain that is already connected (Prosody: ``<conflict/>``, "Component
already connected"): that is :class:`Taken`, and how replicas take turns holding the
gateway (:mod:`.gateway`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import quoteattr

__all__ = ["NS_ACCEPT", "ComponentStream", "Refused", "Taken"]

log = logging.getLogger("vertebra.transports.xmpp")

NS_ACCEPT = "jabber:component:accept"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"


class Taken(ConnectionError):
    """Another connection holds the component (stream error ``conflict``)."""


class Refused(ConnectionError):
    """The server refused the handshake: wrong secret, or no such component."""


class ComponentStream:
    """A component connection for ``domain``; ``on_stanza(xml)`` gets every stanza."""

    def __init__(self, domain: str, secret: str, host: str, port: int,
                 on_stanza: Callable[[ET.Element], None]) -> None:
        self.domain, self._secret, self._host, self._port = domain, secret, host, port
        self._on_stanza = on_stanza
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
        self._root: ET.Element | None = None
        self._depth = 0
        self._ended = False
        self._pending: list[ET.Element] = []     # read with the handshake's answer

    async def open(self, timeout: float) -> None:
        """Connect and shake hands; Taken, Refused or ConnectionError when that fails."""
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port), timeout)
            self._write(f"<stream:stream xmlns='{NS_ACCEPT}' xmlns:stream='{NS_STREAM}' "
                        f"to={quoteattr(self.domain)}>")
            await asyncio.wait_for(self._handshake(), timeout)
        except ConnectionError:         # Taken, Refused, a stream error: as it is
            self.close()
            raise
        except (OSError, TimeoutError) as exc:
            self.close()
            raise ConnectionError(f"component {self.domain} at {self._host}:{self._port}: "
                                  f"{exc or type(exc).__name__}") from None

    async def _handshake(self) -> None:
        while self._root is None:
            for el in await self._stanzas():
                _raise_if_error(el)
        digest = hashlib.sha1((self._root.get("id", "") + self._secret).encode()).hexdigest()
        self._write(f"<handshake>{digest}</handshake>")
        while True:
            got = await self._stanzas()
            for i, el in enumerate(got):
                if el.tag == f"{{{NS_ACCEPT}}}handshake":
                    self._pending = got[i + 1:]
                    return
                _raise_if_error(el)

    async def run(self) -> str:
        """Hand every stanza to ``on_stanza`` until the stream ends; why it ended."""
        try:
            while True:
                got, self._pending = self._pending or await self._stanzas(), []
                for el in got:
                    _raise_if_error(el)
                    try:
                        self._on_stanza(el)
                    except Exception:   # one stanza never ends the stream
                        log.exception("gateway %s: failed to handle a stanza", self.domain)
        except ConnectionError as exc:
            return str(exc) or type(exc).__name__
        finally:
            self.close()

    async def _stanzas(self) -> list[ET.Element]:
        """The top-level elements completed by the next chunk read."""
        if self._reader is None:
            raise ConnectionError("not connected")
        if self._ended:
            raise ConnectionError("the server ended the component stream")
        try:
            data = await self._reader.read(65536)
        except OSError as exc:
            raise ConnectionError(str(exc)) from None
        if not data:
            raise ConnectionError("the server closed the component connection")
        try:
            self._parser.feed(data)
            events: list[Any] = list(self._parser.read_events())
        except ET.ParseError as exc:
            raise ConnectionError(f"unreadable component stream: {exc}") from None
        out: list[ET.Element] = []
        for event, el in events:
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self._root = el
                continue
            self._depth -= 1
            if self._depth == 0:        # </stream:stream>: what came before it counts
                self._ended = True
                break
            if self._depth == 1 and self._root is not None:
                out.append(el)
                self._root.remove(el)
        return out

    def _write(self, text: str) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(text.encode())

    def send(self, text: str) -> bool:
        """Send raw XML (a stanza); False when the connection is gone."""
        if self._writer is None or self._writer.is_closing():
            return False
        self._writer.write(text.encode())
        return True

    def close(self) -> None:
        """End the stream and close the connection (idempotent)."""
        writer, self._writer = self._writer, None
        if writer is not None and not writer.is_closing():
            with contextlib.suppress(Exception):
                writer.write(b"</stream:stream>")
            writer.close()


def _raise_if_error(el: ET.Element) -> None:
    if el.tag != f"{{{NS_STREAM}}}error":
        return
    names = [c.tag.rpartition("}")[2] for c in el if c.tag.startswith(f"{{{NS_STREAMS}}}")]
    text = next((c.text or "" for c in el if c.tag == f"{{{NS_STREAMS}}}text"), "")
    condition = next((n for n in names if n != "text"), "undefined-condition")
    what = f"stream error {condition}" + (f": {text}" if text else "")
    if condition == "conflict":
        raise Taken(what)
    if condition in ("not-authorized", "host-unknown", "improper-addressing"):
        raise Refused(what)
    raise ConnectionError(what)
