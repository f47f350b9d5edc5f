"""Every workflow shape, orchestrated and choreographed, on every transport."""

from __future__ import annotations

import pytest

import vertebra
from vertebra.workflow import Progress, WorkflowError, fan_out, group, step

from .services import Maths, Store

MODES = ["orchestrated", "choreographed"]


@pytest.fixture
async def nodes(open_bus):
    maths, store = Maths(), Store()
    await (await open_bus("maths")).serve(maths)
    await (await open_bus("store")).serve(store)
    return maths, store


@pytest.mark.parametrize("mode", MODES)
async def test_a_chain_feeds_each_result_to_the_next_step(open_bus, nodes, mode):
    client = await open_bus()
    flow = step("maths.inc") | step("maths.double") | step("maths.inc")
    assert str(flow) == "maths.inc() | maths.double() | maths.inc()"
    assert await flow.run_async(client, 1, mode=mode) == 5
    assert await flow.run_async(client, 10, mode=mode) == 23       # a value: it runs many times


async def test_group_gives_the_same_input_to_each_branch_in_order(open_bus, nodes):
    client = await open_bus()
    twice = step("maths.inc") | step("maths.inc")
    flow = step("maths.inc") | group(step("maths.inc"), step("maths.double"), twice)
    assert await flow.run_async(client, 1) == [3, 4, 4]


async def test_fan_out_over_a_list_and_fan_in(open_bus, nodes):
    client = await open_bus()
    body = step("maths.double") | step("maths.inc")
    flow = step("maths.split") | fan_out(body, limit=8) | step("maths.total")
    assert await flow.run_async(client, 30) == sum(2 * i + 1 for i in range(30))


@pytest.mark.parametrize("mode", MODES)
async def test_a_failing_step_names_itself_its_node_and_its_traceback(open_bus, nodes, mode):
    client = await open_bus()
    flow = step("maths.inc") | step("maths.explode") | step("maths.double")
    with pytest.raises(WorkflowError) as info:
        await flow.run_async(client, 1, mode=mode, timeout=30)
    err = info.value
    assert err.step == "maths.explode"
    assert isinstance(err.cause, vertebra.RemoteError) and err.cause.type == "ArithmeticError"
    assert err.node and ":" in err.node                             # host:pid:... of the replica
    assert "explode" in err.remote_traceback


@pytest.mark.parametrize("mode", MODES)
async def test_retries_per_step(open_bus, nodes, mode):
    maths, _ = nodes
    client = await open_bus()
    flow = step("maths.inc") | step("maths.flaky", key=f"k-{mode}", failures=2, retries=2)
    assert await flow.run_async(client, 1, mode=mode, timeout=30) == 2
    assert maths.attempts[f"k-{mode}"] == 3
    short = step("maths.flaky", key=f"short-{mode}", failures=5, retries=1)
    with pytest.raises(WorkflowError):
        await short.run_async(client, 1, mode=mode, timeout=30)
    assert maths.attempts[f"short-{mode}"] == 2


async def test_compensation_undoes_completed_steps_in_reverse_order(open_bus, nodes):
    _, store = nodes
    client = await open_bus()
    put = step("store.put", compensate=step("store.delete"))
    flow = put | put | step("maths.explode")
    with pytest.raises(WorkflowError) as info:
        await flow.run_async(client, "thing")
    assert info.value.compensated == ("store.put", "store.put")
    assert store.deleted == ["key-1", "key-0"]                     # newest first


async def test_progress_is_streamed_orchestrated_and_reported_choreographed(open_bus, nodes):
    client = await open_bus()
    flow = step("maths.inc") | step("maths.double")
    events = [(p.event, p.step) async for p in flow.stream(client, 1)]
    assert events == [("started", "maths.inc"), ("done", "maths.inc"), ("started", "maths.double"),
                      ("done", "maths.double"), ("finished", "")]
    seen: list[Progress] = []
    assert await flow.run_async(client, 1, mode="choreographed", progress=seen.append) == 4
    assert [(p.event, p.step) for p in seen] == events


def test_validate_against_discovery_and_choreography_limits(sync_bus):
    sync_bus("maths").serve(Maths())
    sync_bus("store").serve(Store())
    client = sync_bus()
    good = step("maths.inc") | group(step("store.put"), step("maths.double"))
    good.validate(client)
    bad = step("maths.inc") | step("maths.nope") | step("ghost.run")
    with pytest.raises(ValueError, match=r"maths\.nope.*ghost\.run"):
        bad.validate(client)
    with pytest.raises(ValueError, match="orchestrated"):
        good.run(client, 1, mode="choreographed")
    assert good.run(client, 1) == ["key-0", 4]                      # the sync API
