"""Hello, world: request/reply between a server and a client.

    python examples/hello.py                       # both, on an embedded ZeroMQ hub
    python examples/hello.py serve --url URL       # a server on any transport
    python examples/hello.py call --url URL Ada    # a client

URL is e.g. zmq://127.0.0.1:7000 (start a hub with `vertebra hub`) or
amqp://guest:guest@127.0.0.1:5672/%2F.
"""

from __future__ import annotations

import argparse
import os

import vertebra
from vertebra import Node, rpc


class Greeter(Node):
    """Says hello."""

    name = "greeter"

    @rpc
    def hello(self, who: str) -> str:
        """Greet ``who``."""
        return f"Hello, {who}! (from pid {os.getpid()})"

    @rpc
    def divide(self, a: float, b: float) -> float:
        """Divide: try b = 0 to see a RemoteError."""
        return a / b


def call(url: str, who: str) -> None:
    with vertebra.connect(url, timeout=5.0) as bus:
        greeter = bus.proxy("greeter")
        print(greeter.hello(who))
        try:
            greeter.divide(1, 0)
        except vertebra.RemoteError as exc:
            print(f"remote error: {exc.type}: {exc.message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["both", "serve", "call"], default="both")
    parser.add_argument("who", nargs="?", default="world")
    parser.add_argument("--url", help="transport URL (default: an embedded ZeroMQ hub)")
    args = parser.parse_args()

    if args.mode == "serve":
        vertebra.serve(Greeter(), url=args.url)        # blocks; Ctrl-C drains and stops
    elif args.mode == "call":
        call(args.url, args.who)
    elif args.url:
        with vertebra.connect(args.url) as server:
            server.serve(Greeter())
            call(args.url, args.who)
    else:
        with vertebra.Hub("tcp://127.0.0.1:0") as hub, vertebra.connect(hub.url) as server:
            server.serve(Greeter())
            call(hub.url, args.who)


if __name__ == "__main__":
    main()
