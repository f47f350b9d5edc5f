"""Malformed envelopes reach a node: it answers ProtocolError or drops and counts; it stays up."""

from __future__ import annotations

import asyncio
import time

import pytest

import vertebra
from vertebra.wire.envelope import Envelope

from .services import Calc

MALFORMED = {
    "args not a list": dict(args="oops"),
    "wrong version": dict(v=99),
    "kwargs not a map": dict(kwargs=["x"]),
    "no method": dict(method=""),
    "headers not strings": dict(headers={"a": 1}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_call_is_answered_or_dropped_and_counted(open_bus, case):
    node = await open_bus("calc")
    await node.serve(Calc())
    client = await open_bus()
    env = Envelope("call", service="calc", method="add", args=[1, 2], deadline=time.time() + 1.5)
    for key, value in MALFORMED[case].items():
        setattr(env, key, value)
    fut = client._pending.add(env.id)
    await client.transport.send(env)   # the transport sends it as it is: a bad message on the wire
    try:
        with pytest.raises((vertebra.ProtocolError, TimeoutError)):
            await asyncio.wait_for(fut, 2.0)
    finally:
        client._pending.discard(env.id)
    assert node.transport.stats["malformed"] >= 1 or client.transport.stats["malformed"] >= 1
    assert await client.proxy("calc").add(1, 2) == 3
