"""Discovery on AMQP: a broadcast on the discovery fanout exchange, answers over direct
reply-to (docs/protocol/amqp.md §6).  This module holds the message shapes and the merge."""

from __future__ import annotations

import json
from typing import Any, Final

import amqp

from ...wire.errors import ProtocolError
from ...wire.info import ServiceInfo

__all__ = ["DISCOVER_TYPE", "answer_message", "merge", "parse_answer", "request_message"]

DISCOVER_TYPE: Final = "vertebra.discover"
"""The AMQP ``type`` property of a discovery request and of its answers."""


def request_message(correlation_id: str, reply_to: str) -> amqp.Message:
    """The request every serving bus answers."""
    return amqp.Message(b'{"v":1,"op":"discover"}', content_type="application/json",
                        correlation_id=correlation_id, reply_to=reply_to, type=DISCOVER_TYPE)


def answer_message(infos: list[dict[str, Any]], correlation_id: str) -> amqp.Message:
    """One bus's answer: the services it serves, as ServiceInfo wire dicts."""
    body = json.dumps({"v": 1, "services": infos}, separators=(",", ":")).encode()
    return amqp.Message(body, content_type="application/json", correlation_id=correlation_id,
                        type=DISCOVER_TYPE)


def parse_answer(body: bytes) -> list[dict[str, Any]]:
    """The service dicts of one answer; ProtocolError when it is not one."""
    try:
        services = json.loads(body)["services"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"bad discovery answer: {exc}") from None
    if not isinstance(services, list):
        raise ProtocolError("bad discovery answer: 'services' is not a list")
    return [s for s in services if isinstance(s, dict)]


def merge(answers: list[dict[str, Any]], scheme: str) -> list[ServiceInfo]:
    """One ServiceInfo per service name, ``replicas`` = how many buses named it."""
    merged: dict[str, ServiceInfo] = {}
    counts: dict[str, int] = {}
    for d in answers:
        try:
            info = ServiceInfo.from_dict(d)
        except (TypeError, ValueError):
            continue
        counts[info.name] = counts.get(info.name, 0) + 1
        merged.setdefault(info.name, info)
    return [ServiceInfo(i.name, i.methods, i.doc, counts[n], scheme, i.extra)
            for n, i in merged.items()]
