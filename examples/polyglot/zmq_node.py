"""A vertebra node in plain pyzmq: no vertebra import, only docs/PROTOCOL.md and
docs/protocol/zmq.md.  It serves the "shouter" service through a vertebra hub.

    python examples/polyglot/zmq_node.py               # starts `vertebra hub`, this node,
                                                       # and calls it with `vertebra call`
    python examples/polyglot/zmq_node.py --url zmq://127.0.0.1:7000    # serve on a hub

Then, from anywhere: `vertebra call zmq://127.0.0.1:7000 shouter.shout hello`.
Only JSON is spoken here: a msgpack call is NACKed `p`, and the hub answers its caller
with an `error` of code `protocol` (docs/protocol/zmq.md, "Refusals").
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

VERSION = 1
HELLO, HEARTBEAT, CALL, CAST, TASK, REPLY, ACK, NACK, SERVE, UNSERVE = range(0x01, 0x0B)
BYE, WELCOME, RESET = 0x0D, 0x21, 0x27
SERVICE = "shouter"
HEARTBEAT_S = 1.0


def shout(text: str) -> str:
    """Upper-case ``text``."""
    return text.upper() + "!"


def reverse(data: bytes) -> bytes:
    """Reverse a byte string."""
    return data[::-1]


METHODS: dict[str, Callable[..., Any]] = {"shout": shout, "reverse": reverse}
INFO = {"name": SERVICE, "doc": "A node written in plain pyzmq.", "replicas": 1, "transport": "zmq",
        "extra": {}, "methods": [{"name": n, "kind": "rpc", "signature": sig, "doc": f.__doc__,
                                  "pattern": None}
                                 for (n, f), sig in zip(METHODS.items(), ["(text: str) -> str",
                                                                          "(data: bytes) -> bytes"],
                                                        strict=True)]}


def decode(value: Any) -> Any:
    """PROTOCOL.md §3: JSON tags to values ($bytes → bytes, $map → the map itself)."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and "$bytes" in value:
            return base64.b64decode(value["$bytes"], validate=True)
        if len(value) == 1 and "$map" in value:
            return {k: decode(v) for k, v in value["$map"].items()}
        return {k: decode(v) for k, v in value.items()}
    return value


def encode(value: Any) -> Any:
    """Values to JSON with tags."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        out = {k: encode(v) for k, v in value.items()}
        return {"$map": out} if len(out) == 1 and next(iter(out)).startswith("$") else out
    return value


def answer(call: dict[str, Any]) -> dict[str, Any]:
    """Run a call envelope; return the reply or error envelope (PROTOCOL.md §5)."""
    reply = {"v": VERSION, "id": os.urandom(8).hex(), "re": call["id"]}
    if call.get("deadline") is not None and call["deadline"] < time.time():
        return {**reply, "kind": "error", "error": {"code": "timeout", "type": "CallTimeout",
                                                     "message": "deadline passed", "traceback": ""}}
    method = METHODS.get(call.get("method", ""))
    if method is None:
        return {**reply, "kind": "error", "error": {"code": "unreachable", "type": "Unreachable",
                                                     "message": f"no method {call.get('method')!r}",
                                                     "traceback": ""}}
    try:
        result = method(*decode(call.get("args", [])), **decode(call.get("kwargs", {})))
    except Exception as exc:        # TypeError for wrong arguments, anything the method raises
        return {**reply, "kind": "error", "error": {"code": "remote", "type": type(exc).__name__,
                                                     "message": str(exc), "traceback": ""}}
    return {**reply, "kind": "reply", "result": encode(result)}


def serve(endpoint: str, stop: threading.Event) -> None:
    """zmq.md "Flow": HELLO → WELCOME, SERVE, then deliveries and heartbeats until ``stop``."""
    dealer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"py" + os.urandom(8))
    dealer.setsockopt(zmq.LINGER, 1000)
    dealer.connect(endpoint)

    def send(command: int, *frames: bytes) -> None:
        dealer.send_multipart([bytes((VERSION, command)), *frames])

    def register() -> None:
        send(HELLO, json.dumps({"heartbeat": HEARTBEAT_S, "liveness": 3}).encode())
        send(SERVE, SERVICE.encode(), b"4", json.dumps(INFO).encode())

    register()
    last_sent = time.monotonic()
    while not stop.is_set():
        if dealer.poll(int(HEARTBEAT_S * 500)):
            head, *frames = dealer.recv_multipart()
            command = head[1]
            if command == RESET:                       # the hub restarted: introduce ourselves
                register()
            elif command in (CALL, CAST, TASK):
                _service, tag, body = frames
                try:
                    envelope = json.loads(body)
                    assert isinstance(envelope, dict) and isinstance(envelope.get("id"), str)
                except (ValueError, AssertionError):
                    send(NACK, tag, b"p")   # no id to answer: the hub answers a call (protocol)
                    continue
                if envelope.get("v") != VERSION:        # PROTOCOL.md §5 and §9
                    refusal = {"v": VERSION, "id": os.urandom(8).hex(), "re": envelope["id"],
                               "kind": "error", "error": {
                                   "code": "protocol", "type": "ProtocolError", "traceback": "",
                                   "message": f"unsupported protocol version {envelope.get('v')!r} "
                                              f"(this side speaks {VERSION})"}}
                    if command == CALL:
                        send(REPLY, tag, json.dumps(refusal).encode())
                    else:
                        send(ACK, tag)                  # a cast of another version: dropped
                    continue
                if command == CALL:
                    send(REPLY, tag, json.dumps(answer(envelope)).encode())
                else:
                    answer(envelope)                    # nobody waits for a cast's result
                    send(ACK, tag)
            # WELCOME and HEARTBEAT need no answer; any message counts as a sign of life
        if time.monotonic() - last_sent >= HEARTBEAT_S:
            send(HEARTBEAT)
            last_sent = time.monotonic()
    send(UNSERVE, SERVICE.encode())
    send(BYE)
    dealer.close()


def demo() -> None:
    """Start a hub with the vertebra CLI, serve on it, call with the CLI."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub = subprocess.Popen(["vertebra", "hub", "--bind", f"tcp://127.0.0.1:{port}"])
    stop = threading.Event()
    node = threading.Thread(target=serve, args=(f"tcp://127.0.0.1:{port}", stop))
    node.start()
    url = f"zmq://127.0.0.1:{port}"
    try:
        for target, *args in [("shouter.shout", "hello"), ("shouter.shout",), ("shouter.nosuch",)]:
            for _ in range(50):                        # until the hub knows the service
                run = subprocess.run(["vertebra", "call", url, target, *args],
                                     capture_output=True, text=True, timeout=30)
                if "no live replica" not in run.stderr:
                    break
                time.sleep(0.1)
            print(f"vertebra call {target} {' '.join(args)} -> {(run.stdout or run.stderr).strip()}")
    finally:
        stop.set()
        node.join()
        hub.send_signal(signal.SIGTERM)
        hub.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", help="zmq://host:port of a running hub (default: the demo)")
    args = parser.parse_args()
    if args.url is None:
        demo()
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"serving {SERVICE} on {args.url}", file=sys.stderr)
    serve("tcp://" + args.url.removeprefix("zmq://").split("?")[0], stop)


if __name__ == "__main__":
    main()
