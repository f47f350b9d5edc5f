"""amqps:// against a private RabbitMQ node with a TLS listener and a self-signed CA."""

from __future__ import annotations

import pytest
from amqp_nodes import Jobs
from tests.servers import amqp as amqp_servers

import vertebra


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    with amqp_servers.running_private_tls(tmp_path_factory.mktemp("amqps")) as server:
        yield server


@pytest.mark.slow
async def test_calls_over_amqps_with_a_verified_certificate(tls_server):
    url = (f"amqps://guest:guest@localhost:{tls_server.tls_port}/%2F?cafile={tls_server.ca_file}"
           "&discover_window=0.2")
    async with vertebra.connect_async(url) as server, vertebra.connect_async(url) as client:
        await server.serve(Jobs())
        assert await client.call("jobs", "ping") == "pong"
        assert [s.name for s in await client.nodes()] == ["jobs"]


@pytest.mark.slow
async def test_amqps_refuses_a_broker_it_cannot_verify(tls_server):
    url = f"amqps://guest:guest@localhost:{tls_server.tls_port}/%2F?connect_timeout=5"  # system CAs
    with pytest.raises(ConnectionError, match="amqp broker"):
        async with vertebra.connect_async(url):
            pass
