"""A vertebra client in plain pyzmq: no vertebra import, only docs/PROTOCOL.md and
docs/protocol/zmq.md.  It calls a service through a vertebra hub and prints one line per
call::

    python examples/polyglot/zmq_client.py --url zmq://127.0.0.1:7000 \\
        --call calc.add 2 3 --call calc.add 1 --call calc.nosuch --codec msgpack

Arguments are JSON values (``2``, ``"text"``, ``[1, 2]``, bytes as ``{"$bytes": "AP8="}``).
``--malformed KIND`` sends a call that breaks PROTOCOL.md §2 on purpose (``v2``: version
2; ``no-method``: the method left out; ``deep``: arguments 70 levels deep; ``garbage``:
not an envelope at all) to see the refusal of §5.  Each line ends with the codec the
answer came in, ``[json]`` or ``[msgpack]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from typing import Any

import msgpack
import zmq

VERSION = 1
HELLO, HEARTBEAT, CALL, BYE = 0x01, 0x02, 0x03, 0x0D
WELCOME, ANSWER, UNREACHABLE, PROTOCOL = 0x21, 0x24, 0x25, 0x28
TIMEOUT_S = 10.0


def tag(value: Any) -> Any:
    """PROTOCOL.md §3: values to JSON (bytes as $bytes, one-$-key maps wrapped in $map)."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [tag(v) for v in value]
    if isinstance(value, dict):
        out = {k: tag(v) for k, v in value.items()}
        return {"$map": out} if len(out) == 1 and next(iter(out)).startswith("$") else out
    return value


def untag(value: Any) -> Any:
    """PROTOCOL.md §3: JSON tags back to values, top-down."""
    if isinstance(value, list):
        return [untag(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and "$bytes" in value:
            return base64.b64decode(value["$bytes"], validate=True)
        if len(value) == 1 and isinstance(value.get("$map"), dict):
            return {k: untag(v) for k, v in value["$map"].items()}
        return {k: untag(v) for k, v in value.items()}
    return value


def encode(envelope: dict[str, Any], codec: str) -> bytes:
    """An envelope as bytes in ``codec`` (msgpack needs no tags: bin is bytes)."""
    if codec == "msgpack":
        return bytes(msgpack.packb(envelope, use_bin_type=True))
    return json.dumps({k: tag(v) if k in ("args", "kwargs") else v
                       for k, v in envelope.items()}).encode()


def decode(body: bytes) -> tuple[dict[str, Any], str]:
    """An answer and the codec it came in, told by its first byte (PROTOCOL.md §3)."""
    first = body.lstrip()[:1]
    if first == b"{":
        env = json.loads(body)
        for key in ("result", "payload"):
            if key in env:
                env[key] = untag(env[key])
        return env, "json"
    if first and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF)):
        return msgpack.unpackb(body, raw=False), "msgpack"
    raise ValueError(f"not an envelope: first byte {body[:1]!r}")


class Client:
    """One DEALER to the hub; zmq.md "Flow" 1 and 3: HELLO, WELCOME, then CALL / ANSWER."""

    def __init__(self, url: str) -> None:
        host_port = url.removeprefix("zmq://").split("?", 1)[0].rstrip("/")
        self.dealer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(f"tcp://{host_port}")
        self.counter = 0
        self.heartbeat = 1.0                  # until WELCOME tells the hub's
        self.last_sent = time.monotonic()
        self.prefix = os.urandom(8).hex()
        self.send(HELLO, b"")                # an empty HELLO: the hub's heartbeat settings
        self.welcome = json.loads(self.expect({WELCOME})[1])
        self.heartbeat = float(self.welcome["heartbeat"])

    def send(self, command: int, *frames: bytes) -> None:
        """One message: the header frame [VERSION, COMMAND], then ``frames``."""
        self.dealer.send_multipart([bytes((VERSION, command)), *frames])
        self.last_sent = time.monotonic()

    def expect(self, commands: set[int], msgid: bytes | None = None) -> list[bytes]:
        """Frames of the next message with one of ``commands`` (for ``msgid``, if given),
        heartbeating while waiting."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if self.dealer.poll(100):
                head, *frames = self.dealer.recv_multipart()
                ours = len(head) == 2 and head[0] == VERSION and head[1] in commands
                if ours and (msgid is None or self.answers(head[1], frames, msgid)):
                    return [bytes((head[1],)), *frames]
            if time.monotonic() - self.last_sent >= self.heartbeat:
                self.send(HEARTBEAT)
        raise TimeoutError("no answer from the hub")

    @staticmethod
    def answers(command: int, frames: list[bytes], msgid: bytes) -> bool:
        """Whether a message is the answer to the call ``msgid``."""
        if command == ANSWER:
            return decode(frames[0])[0].get("re") == msgid.decode()
        return frames[0] == msgid             # UNREACHABLE / PROTOCOL: the message id frame

    def new_id(self) -> str:
        """PROTOCOL.md §2: unique per sender."""
        self.counter += 1
        return f"{self.prefix}{self.counter:x}"

    def call(self, service: str, msgid: str, body: bytes) -> str:
        """Send CALL(service, message id, envelope); the answer as one printable line."""
        mid = msgid.encode()
        self.send(CALL, service.encode(), mid, body)
        command, *frames = self.expect({ANSWER, UNREACHABLE, PROTOCOL}, mid)
        if command[0] == UNREACHABLE:
            return f"error unreachable (hub): {frames[1].decode()}"
        if command[0] == PROTOCOL:
            return f"error protocol (hub): {frames[1].decode()}"
        env, codec = decode(frames[0])
        if env["kind"] == "reply":
            return f"{json.dumps(tag(env['result']))} [{codec}]"
        err = env["error"]
        return f"error {err['code']} {err['type']}: {err['message']} [{codec}]"

    def close(self) -> None:
        """BYE, then close."""
        self.send(BYE)
        self.dealer.close()


def malformed(kind: str, msgid: str, codec: str) -> bytes:
    """A call that breaks PROTOCOL.md §2 in the way ``kind`` names."""
    env: dict[str, Any] = {"v": VERSION, "id": msgid, "kind": "call", "service": "calc",
                           "method": "add", "args": [1, 2]}
    if kind == "v2":
        env["v"] = 2
    elif kind == "no-method":
        del env["method"]
    elif kind == "deep":
        deep: Any = 0
        for _ in range(70):
            deep = [deep]
        env["args"] = [deep, 1]
    elif kind == "garbage":
        return b"\xc1 this is not an envelope"
    else:
        raise SystemExit(f"unknown --malformed {kind!r}")
    return encode(env, codec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", required=True, help="zmq://host:port of the hub")
    parser.add_argument("--codec", choices=["json", "msgpack"], default="json")
    parser.add_argument("--call", nargs="+", action="append", default=[], metavar="SERVICE.METHOD",
                        help="SERVICE.METHOD [ARG ...], arguments as JSON; repeatable")
    parser.add_argument("--malformed", action="append", default=[], metavar="KIND",
                        help="v2, no-method, deep or garbage; repeatable")
    args = parser.parse_args()
    client = Client(args.url)
    try:
        for target, *raw in args.call:
            service, _, method = target.partition(".")
            values = [untag(json.loads(a)) for a in raw]     # the JSON tags of §3: bytes
            msgid = client.new_id()
            env = {"v": VERSION, "id": msgid, "kind": "call", "service": service, "method": method,
                   "args": values, "deadline": time.time() + TIMEOUT_S}
            shown = ", ".join(json.dumps(tag(v)) for v in values)
            print(f"{target}({shown}) -> {client.call(service, msgid, encode(env, args.codec))}",
                  flush=True)
        for kind in args.malformed:
            msgid = client.new_id()
            print(f"malformed {kind} -> {client.call('calc', msgid, malformed(kind, msgid, args.codec))}",
                  flush=True)
    finally:
        client.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
