"""Transport adapters, found by URL scheme.

Built-in schemes are imported lazily, only when a URL names them, so that a user who
installed ``vertebra[zmq]`` never imports amqp or slixmpp.  Third-party transports
register a :class:`~vertebra.transports.base.Transport` subclass under the entry-point
group ``vertebra.transports`` with the scheme as the name; the entry points are read only
for a scheme that is not built in (reading them imports ``importlib.metadata``, about
3 MiB that a process on a built-in transport need not carry).
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ..wire.codec import Codec
from .base import Transport

__all__ = ["open_transport", "transport_class"]

# scheme -> (module, class, extra to install)
_BUILTIN: dict[str, tuple[str, str, str]] = {
    "memory": ("vertebra.transports.memory", "MemoryTransport", ""),
    "zmq": ("vertebra.transports.zmq", "ZmqTransport", "zmq"),
    "amqp": ("vertebra.transports.amqp", "AmqpTransport", "amqp"),
    "amqps": ("vertebra.transports.amqp", "AmqpTransport", "amqp"),
    "xmpp": ("vertebra.transports.xmpp", "XmppTransport", "xmpp"),
}


def transport_class(scheme: str) -> type[Transport]:
    """The Transport class for ``scheme``; ImportError names the extra to install."""
    if scheme not in _BUILTIN:
        return _plugin(scheme)
    module, name, extra = _BUILTIN[scheme]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        if extra and exc.name and not exc.name.startswith("vertebra"):
            raise ImportError(f"the {scheme}:// transport needs {exc.name}: "
                              f"pip install 'vertebra[{extra}]'") from exc
        raise
    cls = getattr(mod, name)
    assert isinstance(cls, type) and issubclass(cls, Transport)
    return cls


def _plugin(scheme: str) -> type[Transport]:
    """The Transport class registered for ``scheme`` under the entry-point group."""
    from importlib.metadata import entry_points
    plugins = entry_points(group="vertebra.transports")
    for ep in plugins:
        if ep.name == scheme:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Transport)):
                raise TypeError(f"entry point {ep.value} is not a Transport subclass")
            return cls
    known = sorted(set(_BUILTIN) | {ep.name for ep in plugins})
    raise ValueError(f"unknown transport scheme {scheme!r}; known: {', '.join(known)}")


def open_transport(url: str, codec: Codec) -> Transport:
    """A new, unconnected transport for ``url``."""
    scheme = urlsplit(url).scheme
    if not scheme:
        raise ValueError(f"a transport URL needs a scheme (memory://, zmq://, ...): {url!r}")
    return transport_class(scheme)(url, codec)
