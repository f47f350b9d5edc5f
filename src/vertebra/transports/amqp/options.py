"""The ``amqp://`` / ``amqps://`` URL and its query parameters.

``amqp[s]://user:password@host:port/vhost?param=value&...`` — the vhost is URL-quoted
(``%2F`` for ``/``; an empty path means ``/``).  Parameters:

==================  =========  ================================================================
``prefix``          ""         prepended to every exchange and queue name (share one vhost)
``heartbeat``       30         AMQP heartbeat, seconds (0: off)
``max_attempts``    3          a task that failed this many times goes to the dead queue
``max_redeliveries`` 10        a task redelivered unacked this many times (its worker died
                               each time) goes to the dead queue
``max_message``     16777216   largest encoded envelope accepted or sent, bytes
``discover_window`` 0.3        seconds ``discover()`` collects answers
``expires``         (none)     ms: task/dead queues unused this long are deleted (x-expires)
``connect_timeout`` 5          seconds for TCP + TLS + AMQP handshake
``reconnect_max``   5          cap of the reconnect backoff, seconds
``cafile``          (system)   amqps: CA bundle to verify the broker with
``certfile``        (none)     amqps: client certificate (PEM)
``keyfile``         (none)     amqps: the client certificate's key (PEM)
``server_hostname`` host       amqps: the name checked against the broker's certificate
``verify``          1          amqps: 0 disables certificate verification (tests only)
==================  =========  ================================================================
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["AmqpOptions", "parse_url"]

_KNOWN = {"prefix", "heartbeat", "max_attempts", "max_redeliveries", "max_message",
          "discover_window", "expires", "connect_timeout", "reconnect_max", "cafile", "certfile", "keyfile",
          "server_hostname", "verify"}


@dataclass(frozen=True, slots=True)
class AmqpOptions:
    """Everything an ``amqp://`` URL says."""

    host: str = "127.0.0.1"
    port: int = 5672
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    tls: bool = False
    prefix: str = ""
    heartbeat: int = 30
    max_attempts: int = 3
    max_redeliveries: int = 10
    max_message: int = 16 * 1024 * 1024
    discover_window: float = 0.3
    expires_ms: int | None = None
    connect_timeout: float = 5.0
    reconnect_max: float = 5.0
    ssl: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """``host:port`` for py-amqp."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_url(url: str) -> AmqpOptions:
    """Parse an ``amqp://`` or ``amqps://`` URL; ValueError for anything it does not know."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(f"not an amqp URL: {url!r}")
    tls = parts.scheme == "amqps"
    q = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(q) - _KNOWN
    if unknown:
        raise ValueError(f"unknown amqp URL parameter(s): {', '.join(sorted(unknown))}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    host = parts.hostname or "127.0.0.1"
    sslopts: dict[str, Any] = {}
    if tls:
        verify = q.get("verify", "1") not in ("0", "false", "no")
        sslopts["cert_reqs"] = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        if q.get("cafile"):
            sslopts["ca_certs"] = q["cafile"]
        if q.get("certfile"):
            sslopts["certfile"] = q["certfile"]
        if q.get("keyfile"):
            sslopts["keyfile"] = q["keyfile"]
        if verify:
            sslopts["server_hostname"] = q.get("server_hostname") or host
    expires = q.get("expires")
    return AmqpOptions(
        host=host,
        port=parts.port or (5671 if tls else 5672),
        user=unquote(parts.username) if parts.username else "guest",
        password=unquote(parts.password) if parts.password else "guest",
        vhost=unquote(path) if path else "/",
        tls=tls,
        prefix=q.get("prefix", ""),
        heartbeat=int(q.get("heartbeat", 30)),
        max_attempts=max(1, int(q.get("max_attempts", 3))),
        max_redeliveries=max(1, int(q.get("max_redeliveries", 10))),
        max_message=int(q.get("max_message", 16 * 1024 * 1024)),
        discover_window=float(q.get("discover_window", 0.3)),
        expires_ms=int(expires) if expires else None,
        connect_timeout=float(q.get("connect_timeout", 5.0)),
        reconnect_max=float(q.get("reconnect_max", 5.0)),
        ssl=sslopts,
    )
