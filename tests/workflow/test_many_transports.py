"""One bus over several transports: a workflow whose steps live on different transports."""

from __future__ import annotations

import contextlib
import uuid

import pytest

import vertebra
from vertebra.workflow import group, step

from .services import Maths, Store

NETWORK = ("zmq", "amqp", "xmpp")


class Formatter(vertebra.Node):
    """Lives in-process (memory://)."""

    name = "fmt"

    @vertebra.rpc
    def show(self, parts: list[object]) -> str:
        return " / ".join(map(str, parts))


@pytest.fixture
def urls(servers):
    """A URL per network transport, each in a private namespace of its real server."""
    with contextlib.ExitStack() as stack:
        found = {}
        for scheme in NETWORK:
            try:
                server = servers.get(scheme)
            except ModuleNotFoundError:   # a transport not built yet: the others still run
                continue
            found[scheme] = stack.enter_context(server.namespace(uuid.uuid4().hex[:10]))
        yield found


async def test_a_workflow_through_nodes_on_different_transports(urls):
    assert {"zmq", "amqp"} <= set(urls)
    memory = f"memory://multi-{uuid.uuid4().hex[:6]}"
    async with vertebra.connect_async(urls["zmq"]("maths")) as zmq_node, \
            vertebra.connect_async(urls["amqp"]("store")) as amqp_node, \
            vertebra.connect_async(memory) as mem_node:
        await zmq_node.serve(Maths())
        await amqp_node.serve(Store())
        await mem_node.serve(Formatter())
        client_urls = [memory, urls["zmq"]("client"), urls["amqp"]("client")]
        async with vertebra.connect_async(*client_urls) as client:
            where = {s.name: s.transport for s in await client.nodes()}
            assert where == {"maths": "zmq", "store": "amqp", "fmt": "memory"}
            flow = step("maths.inc") | group(step("maths.double"), step("store.put")) | step("fmt.show")
            assert await flow.run_async(client, 20) == "42 / key-0"
            with pytest.raises(vertebra.Unreachable):
                await client.proxy("nowhere").x()
