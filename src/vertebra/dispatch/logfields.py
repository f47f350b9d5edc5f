"""Structured fields for log records about a message.

Every record vertebra logs about one message carries, as attributes of the
``logging.LogRecord`` (``extra=``), ``service``, ``method`` (or the event's topic),
``message_id``, ``kind`` and ``trace_id`` (from the W3C ``traceparent`` header, "" when
absent), so a JSON formatter or a log shipper can index them without parsing the text::

    logging.basicConfig(format="%(levelname)s %(service)s.%(method)s %(message_id)s %(message)s")

(with such a format, give the other records defaults, e.g. with a ``logging.Filter``).
"""

from __future__ import annotations

from ..wire.envelope import Envelope

__all__ = ["fields"]


def fields(env: Envelope, service: str = "") -> dict[str, str]:
    """The structured fields of a record about ``env``."""
    parent = env.headers.get("traceparent", "")
    parts = parent.split("-")
    return {"service": env.service or service, "method": env.method or env.topic,
            "message_id": env.id, "kind": env.kind,
            "trace_id": parts[1] if len(parts) == 4 else ""}
