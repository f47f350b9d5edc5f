"""The ``amqp://`` and ``amqps://`` transport (RabbitMQ through py-amqp).

Importing this package imports py-amqp; vertebra imports it only when a URL names the
scheme.  See :mod:`.transport` for the capability sheet and docs/transports/amqp.md.
"""

from __future__ import annotations

from .incoming import AmqpIncoming
from .transport import AmqpTransport

__all__ = ["AmqpIncoming", "AmqpTransport"]
