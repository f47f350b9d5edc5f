"""Per-call options: ``proxy.m.options(timeout=, idempotency_key=, headers=)``."""

from __future__ import annotations

import pytest

from vertebra import CallTimeout

from .services import Calc, Gate, Solo
from .util import eventually


async def test_options_bind_a_method_with_the_same_verbs(open_bus):
    await (await open_bus("calc")).serve(Calc())
    client = await open_bus()
    add = client.proxy("calc").add.options(timeout=5.0, headers={"tenant": "a"})
    assert await add(2, 3) == 5
    assert await add.future(4, 5) == 9
    assert add.cast(1, 1)


async def test_a_per_call_timeout_overrides_the_proxy_s(open_bus):
    await (await open_bus("solo")).serve(Solo())
    client = await open_bus()
    hold = client.proxy("solo", timeout=30.0).hold
    with pytest.raises(CallTimeout):
        await hold.options(timeout=0.3)(2.0, "slow")


async def test_an_idempotency_key_makes_a_node_run_a_task_once(open_bus):
    gate = Gate()
    gate.open = True
    await (await open_bus("gate")).serve(gate)
    client = await open_bus()
    work = client.proxy("gate").work
    work.options(idempotency_key="order-42").cast("first")
    work.options(idempotency_key="order-42").cast("second")   # same key: a duplicate
    work.options(idempotency_key="order-43").cast("third")
    client.proxy("gate").mark.cast("end")
    await eventually(lambda: ("mark", "end") in gate.done and "third" in gate.done)
    assert [x for x in gate.done if isinstance(x, str)].count("first") == 1
    assert "second" not in gate.done


async def test_unknown_or_malformed_options_are_refused_when_bound(open_bus):
    client = await open_bus()
    add = client.proxy("calc").add
    with pytest.raises(TypeError, match="unknown call option"):
        add.options(retries=3)
    with pytest.raises(TypeError):
        add.options(headers={"n": 1})
    with pytest.raises(ValueError):
        add.options(timeout=0)
