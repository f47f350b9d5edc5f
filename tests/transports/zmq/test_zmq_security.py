"""CurveZMQ: keygen, an allow-listed hub, and refused keys."""

from __future__ import annotations

import collections
from urllib.parse import quote

import pytest
import zmq

from vertebra.transports.zmq import Hub, keygen
from vertebra.transports.zmq.keys import decode_key, load_keypair, load_public_key
from vertebra.wire.info import ServiceInfo

from .test_zmq_routing import echo_handler


@pytest.fixture
def keys(tmp_path):
    return {name: keygen(str(tmp_path / name)) for name in ("hub", "alice", "mallory")}


def test_keygen_writes_a_readable_pair_with_a_private_secret(keys):
    pub_path, sec_path = keys["alice"]
    public, secret = load_keypair(sec_path)
    assert load_public_key(pub_path) == public
    assert zmq.curve_public(secret) == public
    assert (__import__("os").stat(sec_path).st_mode & 0o777) == 0o600
    assert decode_key(zmq.utils.z85.decode(public).hex()) == public


def _url(hub: Hub, server_pub: bytes, key_file: str, **extra: str) -> str:
    q = "&".join(f"{k}={v}" for k, v in extra.items())
    return f"{hub.url}?server_key={quote(server_pub.decode(), safe='')}&key_file={quote(key_file)}" + (
        f"&{q}" if q else "")


async def test_allow_listed_key_is_served_and_unknown_key_gets_nothing(keys, open_client):
    hub_pub, _ = load_keypair(keys["hub"][1])
    with Hub("tcp://127.0.0.1:0", curve_secret_key_file=keys["hub"][1],
             allow=[keys["alice"][0]]) as hub:
        counts: collections.Counter = collections.Counter()
        node = await open_client(_url(hub, hub_pub, keys["alice"][1]))
        await node.t.serve(ServiceInfo("calc"), echo_handler(counts, "n"))
        client = await open_client(_url(hub, hub_pub, keys["alice"][1]))
        assert (await client.call("calc", "m", 1)).result == ["n", 1]
        with pytest.raises(ConnectionError, match="refused the CURVE handshake"):
            await open_client(_url(hub, hub_pub, keys["mallory"][1], connect_timeout="30"))
        with pytest.raises(ConnectionError):  # plain TCP to a CURVE hub
            await open_client(hub.url + "?connect_timeout=1")
        # events too travel CURVE-only
        got = []

        async def on_event(env):
            got.append(env.payload)

        await client.t.subscribe("t.#", on_event)
        from vertebra.wire.envelope import Envelope
        await node.t.send(Envelope("event", topic="t.x", payload=5))
        from .conftest import eventually
        await eventually(lambda: got == [5])
    assert counts["n"] == 1


def test_an_allow_list_needs_a_key():
    with pytest.raises(ValueError, match="secret key"):
        Hub("tcp://127.0.0.1:0", allow=["x" * 40])
