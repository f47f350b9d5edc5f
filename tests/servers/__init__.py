"""Real servers for the test suite, one module per transport scheme.

Each module ``tests/servers/<scheme>.py`` provides::

    @contextlib.contextmanager
    def running(tmp_dir: pathlib.Path) -> Iterator[Server]
        # start (or find) the server once per test session; raise if it cannot start
        # (a transport whose server cannot start FAILS the run, it is never skipped)

    class Server:
        @contextlib.contextmanager
        def namespace(self, test_id: str) -> Iterator[Callable[[str], str]]
            # per test: yields url_for(role) -> a URL for one new bus.  ``role`` is the
            # name of the service that bus will serve ("calc"), or "client" / "client2"
            # for a bus that only calls.  Everything the test created on the server
            # (queues, exchanges, accounts, nodes) is removed afterwards.

The conformance suite (tests/conformance/conftest.py) uses exactly this and nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import vertebra


@asynccontextmanager
async def started_buses(url: Callable[..., str]) -> AsyncIterator[Callable[..., Any]]:
    """Yields ``await factory(role, url_params={}, **bus_options)`` -> a started AsyncBus
    on ``url(role, **url_params)``; every bus it made is closed on exit, newest first."""
    buses: list[vertebra.AsyncBus] = []

    async def factory(role: str = "client", url_params: dict[str, str] | None = None,
                      **options: Any) -> vertebra.AsyncBus:
        options.setdefault("linger", 2.0)
        bus = vertebra.connect_async(url(role, **(url_params or {})), **options)
        await bus.start()
        buses.append(bus)
        return bus

    try:
        yield factory
    finally:
        for bus in reversed(buses):
            await bus.close(linger=1.0)
