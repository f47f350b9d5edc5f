"""Dead letters, the same on every transport: a task that exhausted its attempts is kept
with its error, listed by ``bus.dead_letters(service)`` and sent back by ``bus.replay``."""

from __future__ import annotations

import asyncio
import json
import time

from click.testing import CliRunner

from vertebra.cli import main

from .services import Calc, Gate
from .util import eventually


async def _dead(bus, service: str, n: int, timeout: float = 20.0) -> list:
    """Ask for the dead letters until there are ``n``; fail after ``timeout`` (a bound, not
    a speed requirement)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await bus.dead_letters(service)
        if len(found) >= n:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{service}: {len(found)} dead letter(s), wanted {n}")
        await asyncio.sleep(0.05)


async def test_a_task_that_always_fails_is_buried_with_its_error(open_bus):
    calc = Calc()
    await (await open_bus("calc")).serve(calc)
    client = await open_bus()
    sent = client.proxy("calc").doomed.cast(7)
    (dead,) = await _dead(client, "calc", 1)
    assert (dead.id, dead.service, dead.method, dead.args, dead.kwargs) == (sent, "calc", "doomed", [7], {})
    assert dead.attempts == 2 == calc.attempts["doomed-7"]      # max_attempts=2, then no more
    assert (dead.error["type"], dead.error["message"]) == ("LookupError", "no 7")


async def test_replay_sends_dead_letters_back_as_first_attempts(open_bus):
    gate = Gate()
    await (await open_bus("gate")).serve(gate)
    client = await open_bus()
    first = client.proxy("gate").work.cast("a")
    second = client.proxy("gate").work.cast("b")
    dead = await _dead(client, "gate", 2)
    assert sorted(d.id for d in dead) == sorted([first, second])
    assert all(d.attempts == 1 and d.error["type"] == "PermissionError" for d in dead)
    gate.open = True
    assert await client.replay("gate", [first]) == 1          # only the one asked for
    await eventually(lambda: gate.done == ["a"], what="the replayed task ran")
    assert [d.id for d in await client.dead_letters("gate")] == [second]
    assert await client.replay("gate") == 1                   # then all that are left
    await eventually(lambda: sorted(map(str, gate.done)) == ["a", "b"], what="the rest ran")
    assert await client.dead_letters("gate") == []
    assert await client.replay("gate") == 0


async def test_a_task_that_raises_typeerror_is_buried_without_retrying(open_bus):
    calc = Calc()
    await (await open_bus("calc")).serve(calc)
    client = await open_bus()
    client.proxy("calc").crunch.cast("x", 0, "too many")     # does not fit the signature
    (dead,) = await _dead(client, "calc", 1)
    assert dead.attempts == 1 and dead.error["type"] == "TypeError"


async def test_the_dead_letters_command_lists_and_replays(open_bus, url_for):
    gate = Gate()
    await (await open_bus("gate")).serve(gate)
    client = await open_bus()
    sent = client.proxy("gate").work.cast(5)
    await _dead(client, "gate", 1)
    runner = CliRunner()
    url = url_for("cli")

    def cli(*args: str):      # in a thread: the command blocks, the node serves on this loop
        return asyncio.to_thread(runner.invoke, main, ["dead-letters", url, "gate", *args])

    listed = await cli("--json")
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.output)
    assert (entry["id"], entry["method"], entry["args"], entry["attempts"]) == (sent, "work", [5], 1)
    assert entry["error"]["type"] == "PermissionError"
    gate.open = True
    replayed = await cli("--replay", sent)
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1" in replayed.output
    await eventually(lambda: gate.done == [5], what="replayed from the command line")
