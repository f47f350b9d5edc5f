"""The pending-call table: answers of abandoned streams tell the node again."""

from __future__ import annotations

from vertebra.dispatch.pending import PendingCalls
from vertebra.wire.envelope import Envelope


def _call(cid: str) -> Envelope:
    return Envelope("call", id=cid, service="files", method="read")


def test_a_beat_for_an_abandoned_stream_cancels_it_again_until_its_final_answer() -> None:
    table = PendingCalls()
    again: list[tuple[str, str]] = []
    table.recancel = lambda service, cid: again.append((service, cid))
    table.abandoned("c1", "files")
    table.resolve(_call("c1").item(5, b"x"))     # items in flight: nothing to do
    table.resolve(_call("c1").beat(6))           # the node still waits: its cancel was lost
    assert again == [("files", "c1")]
    table.resolve(_call("c1").fail({"code": "cancelled", "type": "Cancelled", "message": ""}))
    table.resolve(_call("c1").beat(6))           # after its final answer: forgotten
    assert again == [("files", "c1")] and table.late == 4


def test_answers_nobody_waits_for_are_only_counted() -> None:
    table = PendingCalls()
    again: list[tuple[str, str]] = []
    table.recancel = lambda service, cid: again.append((service, cid))
    table.resolve(_call("c2").beat(1))
    table.resolve(_call("c2").answer(3))
    assert again == [] and table.late == 2
