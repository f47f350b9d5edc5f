"""Fixtures for the xmpp transport's own tests: a private Prosody (tests/servers/xmpp.py)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import slixmpp

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))   # the repo root: tests.servers

from tests.servers import xmpp as xmpp_servers


@pytest.fixture(scope="session")
def xmpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[xmpp_servers.Server]:
    with xmpp_servers.running(tmp_path_factory.mktemp("xmpp-server")) as server:
        yield server


@pytest.fixture
def ns(xmpp_server: xmpp_servers.Server) -> Iterator[Callable[..., str]]:
    """url_for(role, **params) in a room of this test's own."""
    with xmpp_server.namespace(uuid.uuid4().hex[:10]) as url_for:
        yield url_for


@pytest.fixture
async def raw_client(xmpp_server: xmpp_servers.Server) -> AsyncIterator[Callable[..., Any]]:
    """``await raw_client(user)`` -> a plain slixmpp client (with the XEP-0009 plugin)."""
    clients: list[slixmpp.ClientXMPP] = []

    async def factory(user: str = "stock") -> slixmpp.ClientXMPP:
        xmpp_server.register(user)
        c = slixmpp.ClientXMPP(f"{user}@localhost/raw-{uuid.uuid4().hex[:6]}",
                               xmpp_servers.PASSWORD,
                               plugin_config={"feature_mechanisms": {"unencrypted_plain": True}})
        c.enable_starttls = c.enable_direct_tls = False
        c.enable_plaintext = True
        c.register_plugin("xep_0009")
        ready = asyncio.get_running_loop().create_future()
        c.add_event_handler("session_start", lambda _e: ready.done() or ready.set_result(True))
        c.connect("127.0.0.1", xmpp_server.port)
        await asyncio.wait_for(ready, 15)
        clients.append(c)
        return c

    yield factory
    for c in clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(c.disconnect(wait=0.5), 2)
