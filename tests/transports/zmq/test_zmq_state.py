"""The hub's rules without sockets: HubState fed parsed commands, its answers recorded.

Re-sends taken once, attempts left to the node, dead letters (bury, bound, pages, replay),
poison messages, the grace a restarted hub gives services coming back."""

from __future__ import annotations

import json
from typing import Any

from vertebra.transports.zmq import frames as F
from vertebra.transports.zmq.state import HubState

A, N1, N2 = b"client", b"node-1", b"node-2"


class Sim:
    """A HubState with a recording ``send`` and a clock the test moves."""

    def __init__(self, **options: Any) -> None:
        self.out: list[tuple[bytes, int, list[bytes]]] = []
        self.now = 0.0
        settings: dict[str, Any] = dict(heartbeat=1.0, liveness=3, max_message_size=1 << 20,
                                        max_queue=100, max_redeliveries=3, max_dead_letters=1000,
                                        dedup_window=1000, grace=3.0, now=0.0)
        settings.update(options)
        self.state = HubState(self._send, **settings)

    def _send(self, ident: bytes, frames: list[bytes]) -> bool:
        self.out.append((ident, frames[0][1], frames[1:]))
        return True

    def cmd(self, ident: bytes, command: int, *args: bytes) -> None:
        self.state.now = self.now
        self.state.on_command(ident, command, list(args))

    def hello(self, ident: bytes, **opts: Any) -> None:
        self.cmd(ident, F.HELLO, json.dumps(opts).encode())

    def serve(self, ident: bytes, service: bytes = b"svc", prefetch: int = 1) -> None:
        self.hello(ident)
        self.cmd(ident, F.SERVE, service, str(prefetch).encode(), b"{}")

    def got(self, ident: bytes, command: int) -> list[list[bytes]]:
        """The frames (after the header) of every ``command`` sent to ``ident`` so far."""
        return [frames for who, c, frames in self.out if who == ident and c == command]

    def deliveries(self, ident: bytes) -> list[list[bytes]]:
        return [f for who, c, f in self.out if who == ident and c in F.DELIVER_KINDS]

    def tick(self, to: float) -> None:
        self.now = to
        self.state.tick(to)

    def dead(self, service: bytes = b"svc", cursor: bytes = b"0") -> tuple[dict[str, Any], list[list[bytes]]]:
        self.cmd(A, F.DEAD, b"r", service, cursor)
        _, head, *rest = self.got(A, F.DEAD_LETTERS)[-1]
        return json.loads(head), [rest[i:i + 3] for i in range(0, len(rest), 3)]


def test_a_resent_cast_is_confirmed_again_and_queued_once():
    sim = Sim()
    sim.serve(N1, prefetch=10)
    sim.hello(A)
    for _ in range(3):
        sim.cmd(A, F.CAST, b"svc", b"id-1", b"body")
    assert len(sim.deliveries(N1)) == 1
    assert sim.got(A, F.QUEUED) == [[b"id-1"]] * 3
    assert sim.state.stats["duplicates"] == 2


def test_the_next_attempt_under_the_same_id_is_a_new_message():
    sim = Sim()
    sim.serve(N1, prefetch=10)
    sim.hello(A)
    sim.cmd(A, F.TASK, b"svc", b"id-1", b"attempt 1")
    sim.cmd(A, F.TASK, b"svc", b"id-1", b"attempt 2")
    assert [d[2] for d in sim.deliveries(N1)] == [b"attempt 1", b"attempt 2"]


def test_a_requeued_task_comes_back_however_often_it_is_nacked():
    sim = Sim(max_redeliveries=1)
    sim.serve(N1)
    sim.hello(A)
    sim.cmd(A, F.TASK, b"svc", b"id-1", b"body")
    for i in range(10):                       # not an attempt: attempts are the node's
        tag = sim.deliveries(N1)[-1][1]
        sim.cmd(N1, F.NACK, tag, b"1")
        assert len(sim.deliveries(N1)) == i + 2
    assert sim.state.stats["buried"] == 0


def test_bury_keeps_the_envelope_and_the_error_and_dead_lists_them():
    sim = Sim()
    sim.serve(N1)
    sim.hello(A)
    sim.cmd(A, F.TASK, b"svc", b"id-1", b"the envelope")
    tag = sim.deliveries(N1)[0][1]
    error = {"code": "remote", "type": "LookupError", "message": "no 7"}
    sim.cmd(N1, F.BURY, tag, json.dumps(error).encode())
    head, letters = sim.dead()
    assert head == {"next": None, "total": 1, "dropped": 0}
    assert [(m, json.loads(e), b) for m, e, b in letters] == [(b"id-1", error, b"the envelope")]
    assert sim.dead(b"other") == ({"next": None, "total": 0, "dropped": 0}, [])


def test_nack_0_buries_a_task_and_drops_a_cast():
    sim = Sim()
    sim.serve(N1, prefetch=10)
    sim.hello(A)
    sim.cmd(A, F.TASK, b"svc", b"t", b"task")
    sim.cmd(A, F.CAST, b"svc", b"c", b"cast")
    for d in sim.deliveries(N1):
        sim.cmd(N1, F.NACK, d[1], b"0")
    _, letters = sim.dead()
    assert [(m, json.loads(e)["type"]) for m, e, _ in letters] == [(b"t", "Rejected")]
    assert sim.state.stats["dropped"] == 1


def test_a_task_whose_worker_dies_too_often_is_buried_as_worker_lost():
    sim = Sim(max_redeliveries=1)
    sim.serve(N1)
    sim.hello(A)
    sim.cmd(A, F.TASK, b"svc", b"poison", b"body")
    assert len(sim.deliveries(N1)) == 1
    sim.serve(N2)
    sim.now = 10.0
    sim.hello(N2)                        # N2 stays alive, N1 goes silent
    sim.tick(10.0)                       # N1 expired: redelivered to N2 (its one redelivery)
    assert len(sim.deliveries(N2)) == 1
    sim.tick(20.0)                       # N2 dies holding it too: buried
    (_, error, body), = sim.dead()[1]
    assert (json.loads(error)["type"], json.loads(error)["deliveries"], body) == ("WorkerLost", 2, b"body")
    assert sim.state.stats["worker_lost"] == 1


def test_a_worker_that_leaves_cleanly_is_not_a_death():
    sim = Sim(max_redeliveries=0)
    sim.serve(N1)
    sim.hello(A)
    sim.cmd(A, F.TASK, b"svc", b"t", b"body")
    sim.cmd(N1, F.BYE)
    sim.serve(N2)
    assert len(sim.deliveries(N2)) == 1 and sim.state.stats["buried"] == 0


def test_dead_letters_are_bounded_per_service_and_drops_counted():
    sim = Sim(max_dead_letters=3)
    sim.serve(N1, prefetch=10)
    sim.hello(A)
    for i in range(5):
        sim.cmd(A, F.TASK, b"svc", f"id-{i}".encode(), b"body")
    for d in sim.deliveries(N1):
        sim.cmd(N1, F.BURY, d[1], b"{}")
    head, letters = sim.dead()
    assert [m for m, _, _ in letters] == [b"id-2", b"id-3", b"id-4"]     # the oldest dropped
    assert (head["total"], head["dropped"]) == (3, 2)
    assert sim.state.stats["dead_letters_dropped"] == 2


def test_dead_letters_come_in_pages():
    sim = Sim()
    sim.serve(N1, prefetch=1000)
    sim.hello(A)
    for i in range(300):
        sim.cmd(A, F.TASK, b"svc", f"id-{i}".encode(), b"body")
    for d in sim.deliveries(N1):
        sim.cmd(N1, F.BURY, d[1], b"{}")
    seen: list[bytes] = []
    cursor: Any = 0
    pages = 0
    while cursor is not None:
        head, letters = sim.dead(cursor=str(cursor).encode())
        seen += [m for m, _, _ in letters]
        cursor, pages = head["next"], pages + 1
    assert pages == 2 and seen == [f"id-{i}".encode() for i in range(300)]


def test_replay_takes_a_dead_letter_once_and_forgets_its_earlier_sends():
    sim = Sim()
    sim.serve(N1, prefetch=10)
    sim.hello(A)
    sim.cmd(A, F.TASK, b"svc", b"id-1", b"attempt 1")
    sim.cmd(N1, F.ACK, sim.deliveries(N1)[-1][1])        # the node re-sent attempt 2 first
    sim.cmd(N1, F.TASK, b"svc", b"id-1", b"attempt 2")
    sim.cmd(N1, F.BURY, sim.deliveries(N1)[-1][1], b"{}")
    sim.cmd(A, F.REPLAY, b"r1", b"svc", b"id-1", b"attempt 1 again")
    sim.cmd(A, F.REPLAY, b"r2", b"svc", b"id-1", b"attempt 1 again")
    assert sim.got(A, F.REPLAYED) == [[b"r1", b"1"], [b"r2", b"0"]]
    assert sim.dead()[1] == []
    sim.cmd(N1, F.TASK, b"svc", b"id-1", b"attempt 2")   # the replayed task's next attempt
    assert [d[2] for d in sim.deliveries(N1)][-2:] == [b"attempt 1 again", b"attempt 2"]


def test_a_fresh_hub_answers_calls_to_unknown_services_at_once():
    sim = Sim()
    sim.hello(A)
    sim.cmd(A, F.CALL, b"nobody", b"c1", b"call")
    assert sim.got(A, F.UNREACHABLE)[0][0] == b"c1"


def test_a_hub_that_replaced_another_holds_calls_until_their_services_are_back():
    sim = Sim(grace=3.0)
    sim.hello(A, hub="the-old-hub")
    sim.cmd(A, F.CALL, b"svc", b"c1", b"call")
    sim.cmd(A, F.CALL, b"gone", b"c2", b"call")
    sim.tick(1.0)
    assert sim.got(A, F.UNREACHABLE) == []
    sim.serve(N1)                                       # came back within the grace
    assert [d[2] for d in sim.deliveries(N1)] == [b"call"]
    sim.hello(A, hub="the-old-hub")
    sim.tick(3.5)                                       # the grace is over: "gone" is not back
    assert [f[0] for f in sim.got(A, F.UNREACHABLE)] == [b"c2"]
    sim.cmd(A, F.CALL, b"gone", b"c3", b"call")         # and later calls fail at once again
    assert [f[0] for f in sim.got(A, F.UNREACHABLE)] == [b"c2", b"c3"]


def test_hello_from_a_known_peer_keeps_its_services_and_deliveries():
    sim = Sim()
    sim.serve(N1)
    sim.hello(A)
    sim.cmd(A, F.TASK, b"svc", b"t1", b"one")
    sim.cmd(A, F.TASK, b"svc", b"t2", b"two")
    sim.hello(N1)                                       # it lost sight of the hub for a while
    assert len(sim.got(N1, F.WELCOME)) == 2 and len(sim.deliveries(N1)) == 1
    sim.cmd(N1, F.ACK, sim.deliveries(N1)[0][1])        # its delivery is still its own
    assert [d[2] for d in sim.deliveries(N1)] == [b"one", b"two"]


def test_the_hub_remembers_only_the_last_dedup_window_sends():
    sim = Sim(dedup_window=2)
    sim.serve(N1, prefetch=10)
    sim.hello(A)
    for msgid in (b"a", b"b", b"c", b"a", b"c"):    # "a" fell out of the window; "c" did not
        sim.cmd(A, F.CAST, b"svc", msgid, b"body")
    assert [d[2] for d in sim.deliveries(N1)] == [b"body"] * 4
    assert sim.state.stats["duplicates"] == 1
