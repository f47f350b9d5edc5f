"""Refusals and answer codecs on zmq, seen with raw pyzmq frames (PROTOCOL.md §3, §5, §9):
a malformed call comes back as an ``error`` envelope of code ``protocol`` (``re`` = its id),
and every answer is in the codec of the call."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
import zmq

from vertebra.transports.zmq import Hub
from vertebra.transports.zmq import frames as F
from vertebra.wire.codec import codec_of
from vertebra.wire.info import ServiceInfo

from .conftest import OpenClient
from .test_zmq_routing import echo_handler


class Raw:
    """A DEALER speaking the frames by hand, as a program in another language would."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.s = ctx.socket(zmq.DEALER)
        self.s.linger = 0
        self.s.connect(endpoint)
        self.s.send_multipart([F.header(F.HELLO), b""])   # an empty HELLO body is {}

    async def recv(self, timeout: float = 15.0) -> list[bytes]:
        """The next frames other than WELCOME and HEARTBEAT (the node runs on this loop:
        poll without blocking it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.s.poll(0):
                await asyncio.sleep(0.005)
                continue
            msg = self.s.recv_multipart()
            if msg[0] not in (F.header(F.WELCOME), F.header(F.HEARTBEAT)):
                return msg
        raise AssertionError("no answer from the hub")

    async def call(self, msgid: bytes, body: bytes, service: bytes = b"calc") -> bytes:
        """Send CALL and return the envelope of the ANSWER that comes back."""
        self.s.send_multipart([F.header(F.CALL), service, msgid, body])
        msg = await self.recv()
        assert msg[0] == F.header(F.ANSWER), msg
        return msg[1]


@pytest.fixture
async def raw(hub: Hub, open_client: OpenClient) -> AsyncIterator[Raw]:
    node = await open_client(codec="json")     # a JSON node: msgpack answers are the call's
    await node.t.serve(ServiceInfo("calc"), echo_handler(collections.Counter(), "n"))
    ctx = zmq.Context()
    try:
        yield Raw(ctx, hub.endpoint)
    finally:
        ctx.destroy(linger=0)


def _call(**over: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"v": 1, "id": "c1", "kind": "call", "service": "calc", "method": "m",
                           "args": [1]}
    env.update(over)
    return {k: v for k, v in env.items() if v is not None}


def _deep(n: int) -> Any:
    value: Any = 0
    for _ in range(n):
        value = [value]
    return value


def _json(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


def _pack(d: dict[str, Any]) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


MALFORMED = {
    "v=2": _call(v=2),
    "no method": _call(method=None),
    "service not a string": _call(service=7),
    "args not an array": _call(args="x"),
    "kwargs not a map": _call(kwargs=[1]),
    "70 levels deep": _call(args=[_deep(70)]),
}


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_call_is_answered_with_an_error_of_code_protocol(raw, codec, case):
    env = MALFORMED[case]
    body = (_json if codec == "json" else _pack)(env)
    answer = await raw.call(b"c1", body)
    assert codec_of(answer).name == codec   # the call's codec
    got = msgpack.unpackb(answer) if codec == "msgpack" else json.loads(answer)
    assert got["v"] == 1 and got["kind"] == "error" and got["re"] == "c1" and got["id"]
    assert got["error"]["code"] == "protocol"
    assert got["error"]["type"] == "ProtocolError"
    if case == "v=2":       # §9: the message names both versions
        assert "2" in got["error"]["message"] and "1" in got["error"]["message"]


@pytest.mark.parametrize("body", [b"\xc1garbage", _json({"v": 1, "kind": "call"}),
                                  _pack({"v": 1, "kind": "call", "service": "calc"})])
async def test_a_call_without_a_readable_id_is_answered_by_the_message_id_frame(raw, body):
    answer = await raw.call(b"frame-id", body)
    got = msgpack.unpackb(answer) if codec_of(answer).name == "msgpack" else json.loads(answer)
    assert codec_of(answer).name == codec_of(body).name
    assert got["kind"] == "error" and got["re"] == "frame-id"
    assert got["error"]["code"] == "protocol"


async def test_an_oversized_call_is_answered_by_the_hub_with_an_error_envelope(hub, raw):
    answer = await raw.call(b"big", b"{" + b" " * hub.max_message_size)
    got = json.loads(answer)
    assert got["kind"] == "error" and got["re"] == "big"
    assert got["error"]["code"] == "protocol" and "maximum" in got["error"]["message"]
    assert hub.stats["oversized"] == 1


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_an_answer_is_in_the_codec_of_its_call(raw, codec):
    body = (_json if codec == "json" else _pack)(_call(id="ok1", args=[2, b"\x00\xff"]
                                                       if codec == "msgpack" else [2]))
    answer = await raw.call(b"ok1", body)
    assert codec_of(answer).name == codec
    got = msgpack.unpackb(answer) if codec == "msgpack" else json.loads(answer)
    assert got["kind"] == "reply" and got["re"] == "ok1"
    assert got["result"] == (["n", 2, b"\x00\xff"] if codec == "msgpack" else ["n", 2])


async def test_a_cast_that_cannot_be_decoded_is_dropped_and_counted(hub, raw):
    raw.s.send_multipart([F.header(F.CAST), b"calc", b"bad-cast", b"\xc1garbage"])
    assert (await raw.recv()) == [F.header(F.QUEUED), b"bad-cast"]
    # the hub takes one peer's messages in order: a later answer means the cast was settled
    assert json.loads(await raw.call(b"after", _json(_call(id="after"))))["kind"] == "reply"
    assert hub.stats["dropped"] >= 1 and hub.stats["malformed"] >= 1
