"""Fixtures for the amqp transport's own tests: the real broker (tests/servers/amqp.py)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))   # the repo root: tests.servers

from tests.servers import amqp as amqp_servers


@pytest.fixture(scope="session")
def amqp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[amqp_servers.Server]:
    with amqp_servers.running(tmp_path_factory.mktemp("amqp-server")) as server:
        yield server


@pytest.fixture
def ns(amqp_server: amqp_servers.Server) -> Iterator[Callable[..., str]]:
    """url_for(role, **params) in a namespace of this test's own."""
    with amqp_server.namespace(uuid.uuid4().hex[:10]) as url_for:
        yield url_for
