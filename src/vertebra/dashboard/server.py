"""Serving the dashboard with uvicorn: what ``vertebra dashboard URL`` runs."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from ..dispatch.url import default_url
from ..transports import transport_class
from .app import LOOPBACK_HOSTS, create_app

__all__ = ["allowed_hosts_for", "bind", "http_url", "run_dashboard"]

log = logging.getLogger("vertebra.dashboard")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(host: str) -> list[str]:
    """The Host header values to answer when bound to ``host``: the loopback names and
    ``host`` itself; anything when bound to every interface (0.0.0.0 or ::)."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return [*LOOPBACK_HOSTS, host] if host not in LOOPBACK_HOSTS else list(LOOPBACK_HOSTS)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def http_url(sock: socket.socket) -> str:
    """The http:// address a browser opens for a socket made by :func:`bind`."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _print(line: str) -> None:
    print(line, flush=True)


def run_dashboard(url: str | None = None, *, host: str = "127.0.0.1", port: int = 8080,
                  interval: float = 1.0, timeout: float = 2.0,
                  announce: Callable[[str], None] | None = _print, **bus_options: Any) -> None:
    """Serve the dashboard of the vertebra network at ``url`` on ``host:port`` until
    SIGINT/SIGTERM (port 0 picks a free port).

    ``url`` defaults to ``$VERTEBRA_URL`` or the embedded default.  Once the bus is
    connected, ``announce`` is called with a line that gives the page's address (printed
    on stdout by default).  Raises RuntimeError when it cannot start (an unknown scheme, a
    missing extra, a bus that fails to open: the log says why).  Bound to another address
    than loopback the dashboard is open to whoever reaches it — it has no login, and it
    can replay dead letters — so a warning is logged.
    """
    url = url or default_url()
    try:
        transport_class(urlsplit(url).scheme)     # a typo or a missing extra: say so now
    except (ValueError, ImportError) as exc:
        raise RuntimeError(str(exc)) from None
    sock = bind(host, port)
    address = http_url(sock)
    if not _is_loopback(host):
        log.warning("the dashboard listens on %s: anyone who reaches it can see the services and "
                    "replay dead letters (it has no login)", host)

    def ready() -> None:
        if announce is not None:
            announce(f"vertebra dashboard on {address} ({url})")

    app = create_app(url, interval=interval, timeout=timeout, allowed_hosts=allowed_hosts_for(host),
                     on_ready=ready, **bus_options)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False,
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except SystemExit:          # how uvicorn ends a failed startup: reported below instead
        if server.started:
            raise
    finally:
        sock.close()
    if not server.started:
        raise RuntimeError(f"the dashboard of {url} did not start (see the log above)")
