"""zmq:// — the ZeroMQ transport and its hub.

``ZmqTransport`` is what a bus uses for a ``zmq://host:port`` URL; ``Hub`` is the broker
it talks to, embeddable in any process; :func:`run_hub` and :func:`keygen` back the
``vertebra hub`` and ``vertebra keygen`` commands.
"""

from __future__ import annotations

from .hub import Hub, run_hub
from .keys import keygen
from .transport import ZmqTransport

__all__ = ["Hub", "ZmqTransport", "keygen", "run_hub"]
