"""Fixtures of the conformance suite: every test runs once per transport, against a real
server started (or found) by tests/servers/<scheme>.py.  A server that cannot start fails
the run; nothing is skipped except behind a documented Capabilities flag."""

from __future__ import annotations

import contextlib
import importlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

import vertebra
from tests.servers import started_buses

ALL_SCHEMES = ("memory", "zmq", "amqp", "xmpp")
SCHEMES = tuple(s for s in os.environ.get("VERTEBRA_TEST_TRANSPORTS", ",".join(ALL_SCHEMES)).split(",") if s)


class _Servers:
    """Starts each scheme's test server the first time a test needs it."""

    def __init__(self, tmp_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_factory
        self._stack = contextlib.ExitStack()
        self._servers: dict[str, Any] = {}

    def get(self, scheme: str) -> Any:
        if scheme not in self._servers:
            module = importlib.import_module(f"tests.servers.{scheme}")
            self._servers[scheme] = self._stack.enter_context(
                module.running(self._tmp.mktemp(f"{scheme}-server")))
        return self._servers[scheme]

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Servers]:
    s = _Servers(tmp_path_factory)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=SCHEMES)
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url_for(scheme: str, servers: _Servers) -> Iterator[Callable[[str], str]]:
    """url_for(role) -> a URL for one new bus in this test's private namespace."""
    with servers.get(scheme).namespace(uuid.uuid4().hex[:10]) as factory:
        yield factory


OpenBus = Callable[..., Awaitable[vertebra.AsyncBus]]


@pytest.fixture
async def open_bus(url_for: Callable[[str], str]) -> AsyncIterator[OpenBus]:
    """``await open_bus(role, **options)`` -> a started AsyncBus, closed after the test."""
    async with started_buses(url_for) as factory:
        yield factory


@pytest.fixture
def sync_bus(url_for: Callable[[str], str]) -> Iterator[Callable[..., vertebra.Bus]]:
    """``sync_bus(role, **options)`` -> a connected sync Bus, closed after the test."""
    buses: list[vertebra.Bus] = []

    def factory(role: str = "client", **options: Any) -> vertebra.Bus:
        options.setdefault("linger", 2.0)
        bus = vertebra.connect(url_for(role), **options)
        buses.append(bus)
        return bus

    yield factory
    for bus in reversed(buses):
        bus.close(linger=1.0)
