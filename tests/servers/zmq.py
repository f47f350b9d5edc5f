"""zmq:// test servers: nothing to install; one embedded Hub per test on a free port."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Iterator

from vertebra.transports.zmq import Hub


class Server:
    """Hands out a fresh hub (a background thread) for each test."""

    def __init__(self, tmp_dir: pathlib.Path) -> None:
        self.tmp_dir = tmp_dir

    @contextlib.contextmanager
    def namespace(self, test_id: str) -> Iterator[Callable[[str], str]]:
        """A new hub on a free loopback port; every role gets its URL."""
        with Hub("tcp://127.0.0.1:0") as hub:
            url = hub.url
            yield lambda role: url


@contextlib.contextmanager
def running(tmp_dir: pathlib.Path) -> Iterator[Server]:
    """Nothing runs for the whole session: each namespace starts its own hub."""
    yield Server(tmp_dir)
