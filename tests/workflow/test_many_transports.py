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


class Notifier(vertebra.Node):
    """Lives on XMPP."""

    name = "notify"

    @vertebra.rpc
    def send(self, text: str) -> str:
        return f"sent: {text}"


@pytest.fixture
def urls(servers):
    """A URL per network transport, each in a private namespace of its real server."""
    with contextlib.ExitStack() as stack:
        yield {scheme: stack.enter_context(servers.get(scheme).namespace(uuid.uuid4().hex[:10]))
               for scheme in NETWORK}


async def test_a_workflow_through_nodes_on_different_transports(urls):
    memory = f"memory://multi-{uuid.uuid4().hex[:6]}"
    async with vertebra.connect_async(urls["zmq"]("maths")) as zmq_node, \
            vertebra.connect_async(urls["amqp"]("store")) as amqp_node, \
            vertebra.connect_async(urls["xmpp"]("notify")) as xmpp_node, \
            vertebra.connect_async(memory) as mem_node:
        await zmq_node.serve(Maths())
        await amqp_node.serve(Store())
        await xmpp_node.serve(Notifier())
        await mem_node.serve(Formatter())
        client_urls = [memory, urls["zmq"]("client"), urls["amqp"]("client"), urls["xmpp"]("client")]
        async with vertebra.connect_async(*client_urls) as client:
            where = {s.name: s.transport for s in await client.nodes()}
            assert where == {"maths": "zmq", "store": "amqp", "notify": "xmpp", "fmt": "memory"}
            flow = (step("maths.inc") | group(step("maths.double"), step("store.put"))
                    | step("fmt.show") | step("notify.send"))
            assert await flow.run_async(client, 20) == "sent: 42 / key-0"
            with pytest.raises(vertebra.Unreachable):
                await client.proxy("nowhere").x()
