"""The client side's zmq:// URL options (docs/transports/zmq.md).

``zmq://host:port?heartbeat=1.0&liveness=3&connect_timeout=5&confirm_timeout=S
&max_message_size=N&server_key=K&public_key=K&secret_key=K&key_file=PATH&server_key_file=PATH
&direct=1&direct_bind=tcp://HOST:PORT&direct_host=HOST``
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import zmq

from .keys import decode_key, load_keypair, load_public_key

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "ZmqOptions"]

DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ZmqOptions:
    """What a ``zmq://`` URL says: where the hub is, timings, CURVE keys."""

    host: str
    """The hub's host, bracketed when it is an IPv6 address."""
    endpoint: str
    """The hub's ROUTER endpoint, ``tcp://host:port``."""
    heartbeat: float = 1.0
    liveness: int = 3
    connect_timeout: float = 5.0
    """Seconds ``connect`` waits for WELCOME; also the bound of every request (DISCOVER,
    DEAD, REPLAY)."""
    confirm_timeout: float = 3.0
    """Seconds a cast or task waits for QUEUED before the send fails with ConnectionError
    (and the outbox sends it again; the hub takes a re-send once).  Default
    ``heartbeat × liveness``."""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    curve: tuple[bytes, bytes, bytes] | None = None
    """(hub public key, our public key, our secret key) when CURVE is on."""
    direct: bool = True
    """Calls go straight to a replica's own endpoint (docs/transports/zmq.md, "Direct
    calls"), and a node serving here opens one; ``direct=0`` sends every call through the hub
    and opens none."""
    direct_bind: str = ""
    """Where a node's direct endpoint binds (``tcp://host:port``; port ``*`` or ``0``: any
    free one).  Default: the address this host reaches the hub from, any free port."""
    direct_host: str = ""
    """The host a node announces for its direct endpoint, when callers reach it by another
    name than the one it binds (a NAT, a container).  Default: the bound address."""

    @classmethod
    def parse(cls, url: str) -> ZmqOptions:
        """Read ``url``; ValueError if it does not name a hub as ``zmq://host:port``."""
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            raise ValueError(f"a zmq:// URL names a hub as zmq://host:port, got {url!r}")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        heartbeat = float(q.get("heartbeat", 1.0))
        liveness = int(q.get("liveness", 3))
        curve: tuple[bytes, bytes, bytes] | None = None
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
            curve = (server, public, secret)
        return cls(host=host, endpoint=f"tcp://{host}:{parts.port}", heartbeat=heartbeat,
                   liveness=liveness, connect_timeout=float(q.get("connect_timeout", 5.0)),
                   confirm_timeout=float(q.get("confirm_timeout", heartbeat * liveness)),
                   max_message_size=int(q.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)),
                   curve=curve, direct=q.get("direct", "1").lower() not in ("0", "false", "no", "off"),
                   direct_bind=q.get("direct_bind", ""), direct_host=q.get("direct_host", ""))

    def event_endpoint(self, ep: str) -> str:
        """An event endpoint told in WELCOME, with the hub's host as this bus reaches it."""
        if ep.startswith("tcp://"):
            return f"tcp://{self.host}:{ep.rpartition(':')[2]}"
        return ep
