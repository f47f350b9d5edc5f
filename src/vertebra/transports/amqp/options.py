"""The ``amqp://`` / ``amqps://`` URL and its query parameters.

``amqp[s]://user:password@host:port/vhost?param=value&...`` — the vhost is URL-quoted
(``%2F`` for ``/``; an empty path means ``/``).  Parameters:

==================  =========  ================================================================
``prefix``          ""         prepended to every exchange and queue name (share one vhost)
``heartbeat``       30         AMQP heartbeat, seconds (0: off)
``max_redeliveries`` 10        a task redelivered unacked this many times (its worker died
                               each time) is buried in the dead queue (error "WorkerLost")
``max_message``     16777216   largest encoded envelope accepted or sent, bytes
``confirm_timeout`` 10         seconds a send waits for the broker's confirm before it fails
                               with ConnectionError (the outbox sends it again)
``settle``          15         seconds after a reconnect during which a call that comes back
                               unrouted is held and sent again (its replicas are reconnecting
                               too) instead of failing Unreachable
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

How often a failing task runs is the node's business (``@task(max_attempts=...)``), the
same on every transport; ``max_attempts`` in an amqp URL is refused with that hint.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["AmqpOptions", "parse_url"]

_KNOWN = {"prefix", "heartbeat", "max_redeliveries", "max_message", "confirm_timeout", "settle",
          "discover_window", "expires", "connect_timeout", "reconnect_max", "cafile", "certfile",
          "keyfile", "server_hostname", "verify"}


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
    max_redeliveries: int = 10
    max_message: int = 16 * 1024 * 1024
    confirm_timeout: float = 10.0
    settle: float = 15.0
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
    if "max_attempts" in q:
        raise ValueError("max_attempts is not an amqp URL parameter: how often a task runs is "
                         "set on the node, @task(max_attempts=N) or Node.max_attempts")
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
        max_redeliveries=max(1, int(q.get("max_redeliveries", 10))),
        max_message=int(q.get("max_message", 16 * 1024 * 1024)),
        confirm_timeout=max(0.001, float(q.get("confirm_timeout", 10.0))),
        settle=max(0.0, float(q.get("settle", 15.0))),
        discover_window=float(q.get("discover_window", 0.3)),
        expires_ms=int(expires) if expires else None,
        connect_timeout=float(q.get("connect_timeout", 5.0)),
        reconnect_max=float(q.get("reconnect_max", 5.0)),
        ssl=sslopts,
    )
