"""The ``xmpp://`` URL and its options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["XmppOptions", "parse_url"]

_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class XmppOptions:
    """Everything ``xmpp://user:password@host:port?...`` says."""

    user: str
    password: str
    host: str
    port: int
    domain: str
    resource: str
    muc: str
    room: str
    tls: bool
    verify: bool
    ca_file: str
    allow: frozenset[str]
    max_size: int
    grace: float
    """Seconds a message waits in the transport for a replica of its service to appear."""
    ack_wait: float
    """Seconds one ``send()`` of a cast or task waits for the acknowledgement."""
    max_redeliveries: int
    """A task whose replica vanished holding it this many times is buried (``WorkerLost``)."""
    gateway: str = ""
    """The XEP-0114 component domain this bus may hold as the network's gateway ("" none):
    service ``S`` is then reachable at ``S@gateway`` (:mod:`.gateway`)."""
    gateway_secret: str = ""
    gateway_host: str = ""
    gateway_port: int = 5347

    @property
    def bare(self) -> str:
        """This account's bare JID."""
        return f"{self.user}@{self.domain}"

    @property
    def full(self) -> str:
        """This connection's full JID."""
        return f"{self.bare}/{self.resource}"


def parse_url(url: str, default_max: int) -> XmppOptions:
    """Parse an ``xmpp://`` URL; ValueError for a malformed one."""
    parts = urlsplit(url)
    if not parts.username or not parts.hostname:
        raise ValueError(f"an xmpp URL needs user and host: xmpp://user:password@host:port ({url!r})")
    q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if "max_attempts" in q:
        raise ValueError("xmpp: ?max_attempts= is gone: a task's attempts are set on the node "
                         "(@task(max_attempts=...)); see docs/transports/xmpp.md")
    domain = q.get("domain", parts.hostname)
    allow = frozenset(j.strip().lower() for j in q.get("allow", "").split(",") if j.strip())
    gateway = q.get("gateway", "").strip().lower()
    if gateway and ("@" in gateway or "/" in gateway):
        raise ValueError(f"xmpp: ?gateway= is a component domain such as nodes.{domain}, "
                         f"not {gateway!r}")
    if gateway and not q.get("gateway_secret"):
        raise ValueError("xmpp: ?gateway= needs ?gateway_secret= (the component's secret "
                         "in the server's configuration)")
    return XmppOptions(
        user=unquote(parts.username), password=unquote(parts.password or ""),
        host=parts.hostname, port=parts.port or 5222, domain=domain,
        resource=q.get("resource") or "vt-" + os.urandom(5).hex(),
        muc=q.get("muc", f"conference.{domain}"), room=q.get("room", "vertebra"),
        tls=q.get("tls", "1").lower() in _TRUE, verify=q.get("verify", "1").lower() in _TRUE,
        ca_file=q.get("ca", ""), allow=allow,
        max_size=int(q.get("max_size", default_max)),
        grace=max(0.0, float(q.get("grace", 3.0))),
        ack_wait=max(0.01, float(q.get("ack_wait", 30.0))),
        max_redeliveries=max(1, int(q.get("max_redeliveries", 10))),
        gateway=gateway, gateway_secret=q.get("gateway_secret", ""),
        gateway_host=q.get("gateway_host", parts.hostname),
        gateway_port=int(q.get("gateway_port", 5347)))
