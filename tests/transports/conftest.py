"""Fixtures shared by the transports' own tests; each transport's conftest gives ``ns``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import vertebra


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
