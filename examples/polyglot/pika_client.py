"""A vertebra client in plain pika: no vertebra import, only docs/PROTOCOL.md and
docs/protocol/amqp.md.  It calls the "greeter" node of examples/hello.py over RabbitMQ.

    python examples/polyglot/pika_client.py                 # starts hello.py's node itself
    python examples/polyglot/pika_client.py --url URL --no-server   # a node already serves

URL: amqp://guest:guest@127.0.0.1:5672/%2F, optionally with ?prefix=P (PROTOCOL: every
exchange and queue name starts with P).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.parse
from typing import Any

import pika

HELLO = pathlib.Path(__file__).resolve().parent.parent / "hello.py"


class Client:
    """Calls over one channel: direct reply-to for answers, mandatory publishes for calls."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.prefix = urllib.parse.parse_qs(parts.query).get("prefix", [""])[0]
        self.conn = pika.BlockingConnection(pika.URLParameters(parts._replace(query="").geturl()))
        self.channel = self.conn.channel()
        self.answers: dict[str, dict[str, Any]] = {}
        self.counter = 0
        # amqp.md §3: consume direct reply-to (no_ack) on the channel the calls go out on
        self.channel.basic_consume("amq.rabbitmq.reply-to", self.on_answer, auto_ack=True)
        self.channel.add_on_return_callback(self.on_return)

    def on_answer(self, ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        self.answers[props.correlation_id] = json.loads(body)

    def on_return(self, ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        # basic.return: no queue for the service, i.e. nobody serves it (amqp.md §3)
        self.answers[props.correlation_id] = {
            "kind": "error", "error": {"code": "unreachable", "type": "Unreachable",
                                       "message": f"returned: {method.reply_text}"}}

    def call(self, service: str, method: str, *args: Any, timeout: float = 5.0) -> Any:
        self.counter += 1
        call_id = f"{os.urandom(8).hex()}{self.counter:x}"
        envelope = {"v": 1, "id": call_id, "kind": "call", "service": service, "method": method,
                    "args": list(args), "deadline": time.time() + timeout,
                    "reply_to": "amq.rabbitmq.reply-to"}
        self.channel.basic_publish(
            exchange="", routing_key=f"{self.prefix}vertebra.call.{service}",
            body=json.dumps(envelope).encode(), mandatory=True,
            properties=pika.BasicProperties(
                content_type="application/json", delivery_mode=1, message_id=call_id,
                correlation_id=call_id, reply_to="amq.rabbitmq.reply-to",
                expiration=str(int(timeout * 1000))))
        deadline = time.monotonic() + timeout
        while call_id not in self.answers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service}.{method}: no answer in {timeout}s")
            self.conn.process_data_events(time_limit=0.05)
        answer = self.answers.pop(call_id)
        if answer["kind"] == "reply":
            return decode(answer["result"])
        error = answer["error"]
        raise RuntimeError(f"{error['code']}: {error.get('type')}: {error['message']}")


def decode(value: Any) -> Any:
    """PROTOCOL.md §3: undo the JSON tags ($bytes, $map)."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and "$bytes" in value:
            return base64.b64decode(value["$bytes"])
        if len(value) == 1 and "$map" in value:
            return {k: decode(v) for k, v in value["$map"].items()}
        return {k: decode(v) for k, v in value.items()}
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--no-server", action="store_true", help="do not start hello.py's node")
    args = parser.parse_args()
    server = None if args.no_server else subprocess.Popen(
        [sys.executable, str(HELLO), "serve", "--url", args.url])
    try:
        client = Client(args.url)
        for attempt in range(100):                       # wait for the node's call queue
            try:
                print("greeter.hello ->", client.call("greeter", "hello", "pika"))
                break
            except RuntimeError as exc:
                if not str(exc).startswith("unreachable") or attempt == 99:
                    raise
                time.sleep(0.1)
        for service, method, call_args in [("greeter", "divide", (1, 0)),
                                           ("greeter", "nosuch", ()), ("nobody", "ping", ())]:
            try:
                client.call(service, method, *call_args)
            except RuntimeError as exc:
                print(f"{service}.{method} -> error {exc}")
        client.conn.close()
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
