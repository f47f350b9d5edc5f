"""The servers the vertebra-only benches run on: one context manager per transport."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import vertebra

__all__ = ["transport_urls"]


@contextlib.contextmanager
def transport_urls(name: str, amqp: str, label: str) -> Iterator[tuple[str, str]]:
    """(node URL, client URL) for transport ``name``, its server up while in use;
    ``label`` names the memory broker, the amqp prefix and the xmpp namespace."""
    if name == "memory":
        yield f"memory://{label}", f"memory://{label}"
    elif name == "zmq":
        with vertebra.Hub("tcp://127.0.0.1:0") as hub:
            yield hub.url, hub.url
    elif name == "amqp":
        url = f"{amqp}?prefix=bench-{uuid.uuid4().hex[:6]}."
        yield url, url
    elif name == "xmpp":
        from tests.servers import xmpp as xmpp_servers
        with tempfile.TemporaryDirectory() as tmp, xmpp_servers.running(Path(tmp)) as server:
            yield server.url("node", label), server.url("client", label)
    else:
        raise SystemExit(f"unknown transport {name!r}")
