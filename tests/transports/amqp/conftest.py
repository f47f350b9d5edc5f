"""Fixtures for the amqp transport's own tests: the real broker (tests/servers/amqp.py)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))   # the repo root: tests.servers

from tests.servers import amqp as amqp_servers

import vertebra


@pytest.fixture(scope="session")
def amqp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[amqp_servers.Server]:
    with amqp_servers.running(tmp_path_factory.mktemp("amqp-server")) as server:
        yield server


@pytest.fixture
def ns(amqp_server: amqp_servers.Server) -> Iterator[Callable[..., str]]:
    """url_for(role, **params) in a namespace of this test's own."""
    with amqp_server.namespace(uuid.uuid4().hex[:10]) as url_for:
        yield url_for


@pytest.fixture
async def bus_for(ns: Callable[..., str]) -> AsyncIterator[Callable[..., Any]]:
    """``await bus_for(role, url_params={}, **bus_options)`` -> a started AsyncBus."""
    buses: list[vertebra.AsyncBus] = []

    async def factory(role: str = "client", url_params: dict[str, str] | None = None,
                      **options: Any) -> vertebra.AsyncBus:
        options.setdefault("linger", 2.0)
        bus = vertebra.connect_async(ns(role, **(url_params or {})), **options)
        await bus.start()
        buses.append(bus)
        return bus

    yield factory
    for bus in reversed(buses):
        await bus.close(linger=1.0)
