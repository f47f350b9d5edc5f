"""The ``amqp://`` / ``amqps://`` URL and its query parameters.

``amqp[s]://user:password@host:port/vhost?param=value&...`` — the vhost is URL-quoted
(``%2F`` for ``/``; an empty path means ``/``).  Several brokers of one cluster (the same
user, password and vhost on each): ``amqp://user:pw@h1:5672,h2:5673,h3/vhost`` — the bus
connects to the first that answers, in that order, and to the next ones in turn when its
broker is lost.  Parameters:

==================  =========  ================================================================
``prefix``          ""         prepended to every exchange and queue name (share one vhost)
``queue_type``      (auto)     ``classic`` or ``quorum``: the type of the task and dead queues;
                               by default ``quorum`` when the URL names several brokers, else
                               ``classic``.  Every bus of one network must agree (the broker
                               refuses a queue declared with another type)
``heartbeat``       30         AMQP heartbeat, seconds (0: off)
``max_redeliveries`` 10        a task redelivered unacked this many times (its worker died
                               each time) is buried in the dead queue (error "WorkerLost");
                               on quorum queues the broker's own count (x-delivery-count)
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
                               (by default the host of the broker being connected to)
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

_KNOWN = {"prefix", "queue_type", "heartbeat", "max_redeliveries", "max_message", "confirm_timeout", "settle",
          "discover_window", "expires", "connect_timeout", "reconnect_max", "cafile", "certfile",
          "keyfile", "server_hostname", "verify"}


@dataclass(frozen=True, slots=True)
class AmqpOptions:
    """Everything an ``amqp://`` URL says."""

    host: str = "127.0.0.1"
    port: int = 5672
    brokers: tuple[tuple[str, int], ...] = ()
    """Every (host, port) the URL names, in its order; ``host``/``port`` are the first."""
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    tls: bool = False
    prefix: str = ""
    queue_type: str = "classic"
    """``classic`` or ``quorum`` (resolved: the URL's choice, or its default)."""
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
        """``host:port`` of the first broker, for py-amqp."""
        return _address(self.host, self.port)

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of every broker the URL names, in its order."""
        return [_address(h, p) for h, p in self.brokers or ((self.host, self.port),)]

    def ssl_for(self, host: str) -> dict[str, Any] | bool:
        """py-amqp's ``ssl`` argument for a connection to ``host`` (False: plain TCP)."""
        if not self.tls:
            return False
        opts = dict(self.ssl)
        if "server_hostname" in opts and not opts["server_hostname"]:
            opts["server_hostname"] = host
        return opts or True

    @property
    def quorum(self) -> bool:
        """Whether task and dead queues are quorum queues."""
        return self.queue_type == "quorum"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _brokers(netloc: str, default_port: int) -> tuple[str, str, list[tuple[str, int]]]:
    """(user, password, [(host, port), ...]) of a netloc that may name several brokers."""
    userinfo, _, hostlist = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    brokers: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if item.startswith("["):                       # [v6]:port
            host, _, rest = item[1:].partition("]")
            port_s = rest[1:] if rest.startswith(":") else ""
        elif item.count(":") == 1:
            host, _, port_s = item.partition(":")
        else:
            host, port_s = item, ""
        if not port_s:
            port = default_port
        elif port_s.isdigit() and 0 < int(port_s) < 65536:
            port = int(port_s)
        else:
            raise ValueError(f"bad port in amqp URL: {item!r}")
        brokers.append((host or "127.0.0.1", port))
    return unquote(user), unquote(password), brokers


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
    user, password, brokers = _brokers(parts.netloc, 5671 if tls else 5672)
    host = brokers[0][0]
    queue_type = q.get("queue_type") or ("quorum" if len(brokers) > 1 else "classic")
    if queue_type not in ("classic", "quorum"):
        raise ValueError(f"queue_type must be classic or quorum, not {queue_type!r}")
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
            sslopts["server_hostname"] = q.get("server_hostname") or ""   # "": each broker's host
    expires = q.get("expires")
    return AmqpOptions(
        host=host,
        port=brokers[0][1],
        brokers=tuple(brokers),
        user=user or "guest",
        password=password or "guest",
        vhost=unquote(path) if path else "/",
        tls=tls,
        prefix=q.get("prefix", ""),
        queue_type=queue_type,
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
