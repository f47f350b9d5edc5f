"""Fixtures for the amqp transport's own tests: the real broker (tests/servers/amqp.py) and
a private three-node cluster (tests/servers/rabbit_cluster.py) for the tests marked
``cluster`` (``pytest -m cluster`` runs them alone; they run in the normal run too, and a
cluster that cannot start fails them)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))   # the repo root: tests.servers

from tests.servers import amqp as amqp_servers
from tests.servers import rabbit_cluster, started_buses


@pytest.fixture(scope="session")
def amqp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[amqp_servers.Server]:
    with amqp_servers.running(tmp_path_factory.mktemp("amqp-server")) as server:
        yield server


@pytest.fixture
def ns(amqp_server: amqp_servers.Server) -> Iterator[Callable[..., str]]:
    """url_for(role, **params) in a namespace of this test's own."""
    with amqp_server.namespace(uuid.uuid4().hex[:10]) as url_for:
        yield url_for


@pytest.fixture(scope="session")
def rabbit_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rabbit_cluster.Cluster]:
    with rabbit_cluster.running(tmp_path_factory.mktemp("rabbit-cluster")) as cluster:
        print(f"\n3-node RabbitMQ cluster up in {cluster.startup_seconds:.1f}s "
              f"(ports {cluster.ports})")
        yield cluster


@pytest.fixture
def cluster(rabbit_cluster_session: rabbit_cluster.Cluster) -> rabbit_cluster.Cluster:
    """The cluster, every node running (a node a test killed and left down is restarted)."""
    for i, node in enumerate(rabbit_cluster_session.nodes):
        if not node.alive:
            rabbit_cluster_session.restart(i)
    return rabbit_cluster_session


@pytest.fixture
def cluster_ns(cluster: rabbit_cluster.Cluster) -> Iterator[Callable[..., str]]:
    """url_for(role, **params): a URL naming the three nodes, in a namespace of this test's."""
    with cluster.server().namespace(uuid.uuid4().hex[:10]) as url_for:
        yield url_for


@pytest.fixture
async def cluster_bus(cluster: rabbit_cluster.Cluster,
                      cluster_ns: Callable[..., str]) -> AsyncIterator[Callable[..., Any]]:
    """``await cluster_bus(role, first=i, url_params={}, **bus_options)`` -> a started
    AsyncBus whose URL names every node, node ``i`` first (so it connects there)."""
    def url(role: str, first: int = 0, **params: str) -> str:
        return cluster.reorder(cluster_ns(role, **params), first)

    async with started_buses(url) as factory:
        async def make(role: str = "client", first: int = 0,
                       url_params: dict[str, str] | None = None, **options: Any) -> Any:
            return await factory(role, url_params={"first": first, **(url_params or {})},
                                 **options)
        yield make
