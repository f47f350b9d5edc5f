"""One slixmpp client session on the Bus's event loop, reconnected with back-off.

slixmpp retries a connection with back-off of its own (1, 3, 7, 15 s...) and does not
reconnect a session that dropped.  :class:`Session` makes one attempt at a time (a refused
TCP connection fails the attempt at once) and schedules them itself with vertebra's one
backoff (:class:`vertebra.backoff.Backoff`, 0.1 s doubling to a 5 s cap, full jitter):
``start()`` tries until its timeout, a dropped session is reconnected for as long as it
is not closed.  It tells its owner when it is online (after every (re)connect) and offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher.base import MatcherBase

from ...backoff import Backoff
from .options import XmppOptions

__all__ = ["RECONNECT", "Session"]

log = logging.getLogger("vertebra.transports.xmpp")

RECONNECT = Backoff(base=0.1, cap=5.0)
"""The schedule of connection attempts (first connect and reconnects)."""


class _Match(MatcherBase):
    """Matches every stanza ``pred`` accepts."""

    def __init__(self, pred: Callable[[ET.Element], bool]) -> None:
        super().__init__(None)
        self._pred = pred

    def match(self, xml: Any) -> bool:
        return self._pred(xml.xml)


class _Refused(ConnectionError):
    """The server refused us for good (credentials, certificate): retrying cannot help."""


class Session:
    """A client connection; ``on_stanza(xml)`` gets every stanza ``accept(xml)`` selects."""

    def __init__(self, opts: XmppOptions, accept: Callable[[ET.Element], bool],
                 on_stanza: Callable[[ET.Element], None],
                 on_online: Callable[[], None], on_offline: Callable[[], None]) -> None:
        self.opts = opts
        self.online = False
        self.reconnects = 0
        self._on_online, self._on_offline = on_online, on_offline
        self._closing = False
        self._ready: asyncio.Future[str | None] | None = None   # None: logged in
        self._reconnect: asyncio.Task[None] | None = None
        plugin_config: dict[str, Any] = {}
        if not opts.tls:
            plugin_config["feature_mechanisms"] = {"unencrypted_plain": True,
                                                   "unencrypted_scram": True}
        x = slixmpp.ClientXMPP(opts.full, opts.password, plugin_config=plugin_config)
        x.enable_direct_tls = False
        x.enable_starttls = opts.tls
        x.enable_plaintext = not opts.tls
        if opts.tls and not opts.verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            x.ssl_context = ctx
        elif opts.tls and opts.ca_file:
            x.ca_certs = Path(opts.ca_file)
        x.whitespace_keepalive_interval = 30
        x.add_event_handler("session_start", self._session_start)
        x.add_event_handler("failed_auth", lambda _e: self._failed("authentication failed"))
        x.add_event_handler("ssl_invalid_chain",
                            lambda _e: self._failed("the server's certificate is not trusted"))
        x.add_event_handler("connection_failed", lambda _e: self._failed(""))
        x.add_event_handler("disconnected", self._disconnected)
        x.register_handler(Callback("vertebra", _Match(accept), lambda s: on_stanza(s.xml)))
        self.xmpp = x

    async def start(self, timeout: float = 15.0) -> None:
        """Connect and authenticate; ConnectionError when that fails within ``timeout``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        attempt = 0
        while True:
            try:
                await self._attempt(max(0.5, end - loop.time()))
                return
            except _Refused:
                raise                   # wrong password, untrusted certificate: no retry
            except ConnectionError:
                delay = RECONNECT.delay(attempt)
                attempt += 1
                if self._closing or loop.time() + delay >= end:
                    raise
                await asyncio.sleep(delay)

    async def _attempt(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.xmpp.loop = loop
        self._ready = loop.create_future()
        self.xmpp.connect(self.opts.host, self.opts.port)
        try:
            why = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            why = "timed out"
        if why is not None:
            self.xmpp.cancel_connection_attempt()
            with contextlib.suppress(Exception):
                self.xmpp.abort()
            what = f"cannot log in to {self.opts.host}:{self.opts.port} as {self.opts.full}"
            if why and why != "timed out":
                raise _Refused(f"{what}: {why}")
            raise ConnectionError(f"{what}{': ' + why if why else ''}")

    def _session_start(self, _event: Any) -> None:
        self.online = True
        self.xmpp.send_raw("<presence/>")
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        self._on_online()

    def _failed(self, why: str) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(why)

    def _disconnected(self, _event: Any) -> None:
        was = self.online
        self.online = False
        if was:
            self._on_offline()
        if not self._closing and was and self._reconnect is None:
            self._reconnect = asyncio.ensure_future(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        attempt = 0
        try:
            while not self._closing and not self.online:
                try:
                    await self._attempt(10.0)
                    self.reconnects += 1
                    log.info("%s reconnected", self.opts.full)
                    return
                except ConnectionError:
                    delay = RECONNECT.delay(attempt)
                    attempt += 1
                    log.warning("%s: reconnect failed; again in %.2f s", self.opts.full, delay)
                await asyncio.sleep(delay)
        finally:
            self._reconnect = None

    def send(self, text: str) -> bool:
        """Send raw XML; False (nothing sent) while offline."""
        if not self.online:
            return False
        self.xmpp.send_raw(text)
        return True

    def drop(self) -> None:
        """Cut the TCP connection at once (for tests: a network failure)."""
        transport = self.xmpp.transport
        if transport is not None:
            transport.abort()

    async def close(self) -> None:
        """Leave for good (no reconnect)."""
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        self.xmpp.cancel_connection_attempt()
        if self.online:
            self.online = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.xmpp.disconnect(wait=1.0), 2.0)
        with contextlib.suppress(Exception):
            self.xmpp.abort()
        filters = getattr(self.xmpp, "_run_out_filters", None)
        if filters is not None:
            filters.cancel()
