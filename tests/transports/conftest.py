"""Fixtures shared by the transports' own tests; each transport's conftest gives ``ns``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.servers import started_buses


@pytest.fixture
async def bus_for(ns: Callable[..., str]) -> AsyncIterator[Callable[..., Any]]:
    """``await bus_for(role, url_params={}, **bus_options)`` -> a started AsyncBus."""
    async with started_buses(ns) as factory:
        yield factory
