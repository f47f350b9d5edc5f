"""Streaming: a node sends a large file in chunks; the client puts it back together.

    python examples/stream_file.py                     # both, on an embedded ZeroMQ hub
    python examples/stream_file.py --size-mb 32        # a bigger file (random bytes)
    python examples/stream_file.py serve DIR --url URL # a node serving the files in DIR
    python examples/stream_file.py fetch NAME --url URL [--out PATH]   # a client

The node's ``read`` is a plain (sync) generator: each ``yield`` is one streamed item, and
the node sends no more than the consumer's window (the bus option ``stream_window``,
default 32 items) ahead of what the consumer has taken.  The client iterates over
``files.read.stream(name)``, hashes the chunks as they come and checks the SHA-256
against the node's.  Then it stops a second stream after three chunks: the node's
generator is closed at once, having read at most a window ahead.

URL is e.g. zmq://127.0.0.1:7000 (start a hub with `vertebra hub`) or
amqp://guest:guest@127.0.0.1:5672/%2F.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import vertebra
from vertebra import Node, rpc

CHUNK = 64 * 1024
WINDOW = 32          # the bus's default stream_window, said here to print it


class Files(Node):
    """Serves the files of one directory, streamed in chunks."""

    name = "files"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.last: dict[str, Any] = {}

    def _path(self, name: str) -> Path:
        path = self.root / name
        if path.parent != self.root or not path.is_file():
            raise FileNotFoundError(name)
        return path

    @rpc
    def read(self, name: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Stream the file ``name`` in chunks of ``chunk_size`` bytes."""
        path = self._path(name)
        state: dict[str, Any] = {"name": name, "chunks": 0, "finished": False, "closed": False}
        with self.lock:
            self.last = state
        try:
            with path.open("rb") as f:
                while chunk := f.read(chunk_size):
                    state["chunks"] += 1
                    yield chunk
            state["finished"] = True
        finally:                   # also on GeneratorExit: the consumer stopped early
            state["closed"] = True

    @rpc
    def stat(self, name: str) -> dict[str, Any]:
        """Size and SHA-256 of the file ``name``."""
        path = self._path(name)
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return {"size": path.stat().st_size, "sha256": digest.hexdigest()}

    @rpc
    def last_read(self) -> dict[str, Any]:
        """How far the latest ``read`` got: chunks read, finished, generator closed."""
        with self.lock:
            return dict(self.last)


def fetch(url: str, name: str, out: Path | None) -> None:
    with vertebra.connect(url, timeout=60.0) as bus:
        files = bus.proxy("files")
        expected = files.stat(name)
        digest, size, chunks = hashlib.sha256(), 0, 0
        start = time.perf_counter()
        with (out.open("wb") if out else open(os.devnull, "wb")) as sink:
            for chunk in files.read.stream(name):
                digest.update(chunk)
                sink.write(chunk)
                size += len(chunk)
                chunks += 1
        took = time.perf_counter() - start
        print(f"streamed {name}: {chunks} chunks, {size:,} bytes in {took:.2f} s "
              f"({size / took / 1e6:.1f} MB/s)")
        ok = digest.hexdigest() == expected["sha256"] and size == expected["size"]
        print(f"sha256 {digest.hexdigest()} {'matches' if ok else 'DIFFERS FROM'} the node's")
        if not ok:
            raise SystemExit(f"the node says {expected}")

        # Stop early: leaving the loop cancels the stream, and the node closes its generator.
        taken = 0
        with files.read.stream(name) as stream:
            for taken, _ in enumerate(stream, 1):
                if taken == 3:
                    break
        deadline = time.monotonic() + 10
        while not (last := files.last_read()).get("closed") and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"stopped after {taken} chunks: the node had read {last['chunks']} of {chunks} "
              f"(window {WINDOW}), generator closed: {last['closed']}, finished: {last['finished']}")


def make_file(root: Path, size_mb: float) -> str:
    name = "big.bin"
    left = int(size_mb * 1024 * 1024)
    with (root / name).open("wb") as f:
        while left > 0:
            block = os.urandom(min(left, 1 << 20))
            f.write(block)
            left -= len(block)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["both", "serve", "fetch"], default="both")
    parser.add_argument("arg", nargs="?", help="serve: the directory; fetch: the file's name")
    parser.add_argument("--url", help="transport URL (default: an embedded ZeroMQ hub)")
    parser.add_argument("--size-mb", type=float, default=8.0, help="both: size of the file made")
    parser.add_argument("--out", type=Path, help="fetch: write the file here")
    args = parser.parse_args()

    if args.mode == "serve":
        vertebra.serve(Files(Path(args.arg or ".").resolve()), url=args.url)   # Ctrl-C drains
        return
    if args.mode == "fetch":
        fetch(args.url, args.arg, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        name = make_file(root, args.size_mb)
        if args.url:
            with vertebra.connect(args.url) as server:
                server.serve(Files(root))
                fetch(args.url, name, args.out)
        else:
            with vertebra.Hub("tcp://127.0.0.1:0") as hub, vertebra.connect(hub.url) as server:
                server.serve(Files(root))
                fetch(hub.url, name, args.out)


if __name__ == "__main__":
    main()
