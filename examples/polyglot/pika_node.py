"""A vertebra node in plain pika: no vertebra import, only docs/PROTOCOL.md and
docs/protocol/amqp.md.  It serves "adder" (add, and a method that fails) on RabbitMQ and
answers discovery, so vertebra callers find it and call it like any vertebra node.

    python examples/polyglot/pika_node.py --url amqp://guest:guest@127.0.0.1:5672/%2F

It prints "serving adder" once its call queue is consumed, then serves until SIGTERM.
URL: optionally ?prefix=P (every exchange and queue name starts with P).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.parse
from typing import Any

import msgpack
import pika

SERVICE = "adder"
INFO = {"name": SERVICE, "doc": "Adds numbers; a node written in plain pika.", "methods": [
    {"name": "add", "kind": "rpc", "signature": "(a, b)", "doc": "Return a + b.", "pattern": ""},
    {"name": "fail", "kind": "rpc", "signature": "()", "doc": "Raise.", "pattern": ""}]}
METHODS = {"add": (2, lambda a, b: a + b), "fail": (0, lambda: 1 / 0)}


def decode(body: bytes) -> tuple[dict[str, Any], bool]:
    """PROTOCOL.md §3: the first byte tells the codec; returns (envelope, is_msgpack)."""
    if body[:1] == b"{":
        return json.loads(body), False
    return msgpack.unpackb(body, raw=False), True


def encode(envelope: dict[str, Any], as_msgpack: bool) -> bytes:
    """Answers use the codec of the call (§3)."""
    return msgpack.packb(envelope, use_bin_type=True) if as_msgpack else json.dumps(envelope).encode()


def answer_for(call: dict[str, Any]) -> dict[str, Any]:
    """The reply or error envelope for one decoded call (§1, §5)."""
    base = {"v": 1, "id": os.urandom(8).hex(), "re": call.get("id", "")}

    def error(code: str, type_: str, message: str, **extra: Any) -> dict[str, Any]:
        return {**base, "kind": "error",
                "error": {"code": code, "type": type_, "message": message, "traceback": "", **extra}}

    if call.get("v") != 1:
        return error("protocol", "ProtocolError",
                     f"unsupported protocol version {call.get('v')!r} (this side speaks 1)")
    if call.get("deadline") is not None and time.time() >= call["deadline"]:
        return error("timeout", "CallTimeout", "deadline passed before it started")
    if call.get("method") not in METHODS:
        return error("unreachable", "Unreachable",
                     f"service {SERVICE!r} has no method {call.get('method')!r}")
    arity, func = METHODS[call["method"]]
    args = call.get("args", [])
    if len(args) != arity or call.get("kwargs"):
        return error("remote", "TypeError", f"{call['method']} takes {arity} positional argument(s)",
                     bad_arguments=True)
    try:
        return {**base, "kind": "reply", "result": func(*args)}
    except Exception as exc:
        return error("remote", type(exc).__name__, str(exc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = parser.parse_args()
    parts = urllib.parse.urlsplit(args.url)
    prefix = urllib.parse.parse_qs(parts.query).get("prefix", [""])[0]
    conn = pika.BlockingConnection(pika.URLParameters(parts._replace(query="").geturl()))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=16)
    # protocol/amqp.md §2: the call queue is non-durable, auto-delete, no arguments
    call_queue = f"{prefix}vertebra.call.{SERVICE}"
    ch.queue_declare(call_queue, durable=False, auto_delete=True)

    def on_call(ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        try:
            call, as_msgpack = decode(body)
        except Exception:
            ch.basic_reject(method.delivery_tag, requeue=False)     # §5: no id to answer
            return
        if props.reply_to:                                          # §3: the broker's reply-to
            ch.basic_publish("", props.reply_to, encode(answer_for(call), as_msgpack),
                             pika.BasicProperties(correlation_id=call.get("id") or props.correlation_id,
                                                  content_type="application/msgpack" if as_msgpack
                                                  else "application/json"))
        ch.basic_ack(method.delivery_tag)

    # protocol/amqp.md §6: answer discovery on an exclusive queue bound to the fanout exchange
    ch.exchange_declare(f"{prefix}vertebra.discovery", "fanout", durable=True)
    disco = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(disco, f"{prefix}vertebra.discovery")

    def on_discover(ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        if props.reply_to:
            ch.basic_publish("", props.reply_to, json.dumps({"v": 1, "services": [INFO]}).encode(),
                             pika.BasicProperties(type="vertebra.discover",
                                                  correlation_id=props.correlation_id,
                                                  content_type="application/json"))

    ch.basic_consume(call_queue, on_call)
    ch.basic_consume(disco, on_discover, auto_ack=True)
    signal.signal(signal.SIGTERM, lambda *_: ch.stop_consuming())
    print(f"serving {SERVICE}", flush=True)
    try:
        ch.start_consuming()
    finally:
        conn.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
