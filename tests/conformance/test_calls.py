"""Request/reply: values, arguments, errors, timeouts, deadlines — the same on every transport."""

from __future__ import annotations

import asyncio
import os
import pickle

import pytest

import vertebra

from .services import Calc, Point, Solo

VALUES = [
    None, True, False, 0, -1, 2**53, -(2**63), 1.5, -0.0, 1e300, "", "plain",
    "héllo ✓ 中文 🚀", b"", b"\x00\x01\xff" * 10, [], {}, [1, "two", None, [3.0, [b"4"]]],
    {"a": {"b": {"c": [1, 2, {"d": b"e"}]}}, "é": None},
    {"$bytes": "not really bytes"}, {"$map": {"x": 1}}, {"$other": 1, "$two": 2},
]


async def test_every_value_type_round_trips(open_bus):
    node = await open_bus("calc")
    await node.serve(Calc())
    client = await open_bus("client")
    calc = client.proxy("calc", timeout=10)
    for value in VALUES:
        got = await calc.echo(value)
        assert got == value and type(got) is type(value), value


async def test_tuples_arrive_as_lists_and_msgpack_codec_works(open_bus):
    node = await open_bus("calc", codec="msgpack")
    await node.serve(Calc())
    client = await open_bus("client", codec="msgpack")
    assert await client.proxy("calc").echo((1, (2, b"3"))) == [1, [2, b"3"]]
    json_client = await open_bus("client2")
    assert await json_client.proxy("calc").echo({"k": b"\x00"}) == {"k": b"\x00"}


async def test_positional_and_keyword_arguments(open_bus):
    node = await open_bus("calc")
    await node.serve(Calc())
    calc = (await open_bus()).proxy("calc")
    assert await calc.add(2, 3) == 5
    assert await calc.add(a=2, b=40) == 42
    assert await calc.kw(3, scale=10, offset=1) == 31


async def test_async_handler(open_bus):
    node = await open_bus("calc")
    await node.serve(Calc())
    calc = (await open_bus()).proxy("calc")
    results = await asyncio.gather(*(calc.slow_add(i, i, 0.1) for i in range(20)))
    assert results == [2 * i for i in range(20)]


async def test_remote_exception_carries_type_message_traceback_and_node_survives(open_bus):
    node = await open_bus("calc")
    await node.serve(Calc())
    calc = (await open_bus()).proxy("calc")
    with pytest.raises(vertebra.RemoteError) as info:
        await calc.fail("boom ✗")
    err = info.value
    assert isinstance(err, vertebra.VertebraError)
    assert err.type == "ValueError"
    assert err.message == "boom ✗"
    assert "def fail" in err.remote_traceback or "in fail" in err.remote_traceback
    assert await calc.add(1, 1) == 2


async def test_wrong_arguments_are_refused_before_the_handler_runs(open_bus):
    node = await open_bus("calc")
    await node.serve(Calc())
    calc = (await open_bus()).proxy("calc")
    with pytest.raises(vertebra.RemoteError) as info:
        await calc.add(1, 2, 3)
    assert info.value.type == "TypeError"
    with pytest.raises(vertebra.RemoteError):
        await calc.add(1, c=2)
    assert await calc.add(1, 2) == 3


async def test_unknown_service_is_unreachable(open_bus):
    client = await open_bus()
    errors = (vertebra.Unreachable,) if client.transport.capabilities.fast_unreachable else (
        vertebra.Unreachable, vertebra.CallTimeout)
    with pytest.raises(errors):
        await client.proxy("nobody-serves-this", timeout=5).ping()


async def test_unknown_method_is_unreachable(open_bus):
    node = await open_bus("calc")
    await node.serve(Calc())
    calc = (await open_bus()).proxy("calc")
    with pytest.raises(vertebra.Unreachable, match="no method"):
        await calc.no_such_method(1)
    assert await calc.add(2, 2) == 4


async def test_timeout_raises_call_timeout_which_is_a_timeout_error(open_bus):
    node = await open_bus("calc")
    await node.serve(Calc())
    calc = (await open_bus()).proxy("calc", timeout=0.3)
    with pytest.raises(vertebra.CallTimeout) as info:
        await calc.sleep(1.5, "late")
    assert isinstance(info.value, TimeoutError)
    assert await calc.add(1, 2) == 3


async def test_node_does_not_start_work_whose_deadline_passed(open_bus):
    node = await open_bus("solo")
    solo = Solo()
    await node.serve(solo)
    client = await open_bus()
    first = asyncio.ensure_future(client.proxy("solo", timeout=10).hold(1.0, "first"))
    await asyncio.sleep(0.3)  # "first" holds the only slot
    with pytest.raises(vertebra.CallTimeout):
        await client.proxy("solo", timeout=0.2).hold(0.0, "expired")
    assert await first == "first"
    assert await client.proxy("solo", timeout=10).hold(0.0, "after") == "after"
    assert "expired" not in solo.started
    assert solo.started == ["first", "after"]


async def test_dataclass_arguments_and_results(open_bus):
    node = await open_bus("calc")
    await node.serve(Calc())
    calc = (await open_bus()).proxy("calc")
    assert await calc.norm(Point(-3, 4)) == {"x": 3, "y": 4}
    assert await calc.norm({"x": -1, "y": -2}) == {"x": 1, "y": 2}


async def test_cast_returns_before_the_slow_handler_finishes(open_bus):
    node = await open_bus("calc")
    calc_node = Calc()
    await node.serve(calc_node)
    client = await open_bus()
    mid = client.proxy("calc").sleep.cast(0.5, "cast")
    assert isinstance(mid, str)
    assert calc_node.finished == []          # cast did not wait for the handler
    from .util import eventually
    await eventually(lambda: calc_node.finished == ["cast"])


async def test_future_starts_calls_that_are_awaited_later(open_bus):
    node = await open_bus("calc")
    await node.serve(Calc())
    calc = (await open_bus()).proxy("calc")
    futures = [calc.add.future(i, 1) for i in range(10)]
    assert [await f for f in futures] == list(range(1, 11))


async def test_pickled_payload_is_never_executed(open_bus, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    blob = pickle.dumps(Exploit())
    node = await open_bus("calc")
    await node.serve(Calc())
    calc = (await open_bus()).proxy("calc")
    assert await calc.echo(blob) == blob   # carried as opaque bytes
    with pytest.raises(vertebra.ProtocolError):
        await calc.echo(Exploit())         # an arbitrary object cannot even be sent
    await asyncio.sleep(0.1)
    assert not marker.exists()


async def test_deep_nesting_and_oversized_messages_are_refused(open_bus):
    node = await open_bus("calc")
    await node.serve(Calc())
    client = await open_bus()
    calc = client.proxy("calc")
    deep: list = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(vertebra.ProtocolError):
        await calc.echo(deep)
    big = "x" * (client.transport.capabilities.max_message_size + 1)
    with pytest.raises(vertebra.ProtocolError):
        await calc.echo(big)
    assert await calc.add(1, 2) == 3


async def test_calls_are_spread_across_replicas(open_bus):
    for tag in ("r1", "r2"):
        await (await open_bus("calc")).serve(Calc(tag))
    calc = (await open_bus()).proxy("calc")
    answered = set(await asyncio.gather(*(calc.whoami() for _ in range(40))))
    assert answered == {"r1", "r2"}


async def test_graceful_drain_finishes_in_flight_calls(open_bus):
    node = await open_bus("calc")
    calc_node = Calc()
    await node.serve(calc_node)
    calc = (await open_bus()).proxy("calc", timeout=10)
    call = asyncio.ensure_future(calc.sleep(0.5, "in-flight"))
    from .util import eventually
    await eventually(lambda: calc_node.started == ["in-flight"])
    await node.stop_serving(timeout=5)
    assert await call == "in-flight"
    assert calc_node.finished == ["in-flight"]
    errors = (vertebra.Unreachable,) if node.transport.capabilities.fast_unreachable else (
        vertebra.Unreachable, vertebra.CallTimeout)
    with pytest.raises(errors):
        await (await open_bus("client2")).proxy("calc", timeout=2).add(1, 1)


async def test_calls_after_a_slow_one_are_not_blocked(open_bus):
    node = await open_bus("calc")
    await node.serve(Calc())
    calc = (await open_bus()).proxy("calc", timeout=10)
    slow = asyncio.ensure_future(calc.sleep(0.5, "slow"))
    assert await calc.add(1, 1) == 2
    assert not slow.done()  # the fast call was answered while the slow one still ran
    assert await slow == "slow"
