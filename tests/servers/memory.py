"""memory:// needs no server: each test gets its own named in-process broker."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Iterator


class Server:
    """Hands each test a private ``memory://NAME``."""

    @contextlib.contextmanager
    def namespace(self, test_id: str) -> Iterator[Callable[[str], str]]:
        """Every bus of one test shares ``memory://<test_id>``."""
        url = f"memory://{test_id}"
        yield lambda role: url


@contextlib.contextmanager
def running(tmp_dir: pathlib.Path) -> Iterator[Server]:
    """Nothing to start."""
    yield Server()
