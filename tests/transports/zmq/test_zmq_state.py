"""The hub's rules without sockets: HubState fed parsed commands, its answers recorded.

Re-sends taken once, attempts left to the node, dead letters (bury, bound, pages, replay),
poison messages, the grace a restarted hub gives services coming back; the priority
queue; streamed calls (ITEM)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vertebra.transports.workqueue import WorkQueue
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


# ---------------------------------------------------------------- priorities


def test_the_work_queue_gives_the_highest_priority_first_fifo_within_one():
    q: WorkQueue[tuple[str, int]] = WorkQueue()
    for name, p in [("a", 0), ("b", 5), ("c", 0), ("d", 9), ("e", 5), ("f", 1)]:
        q.append((name, p))
    q.appendleft(("back", 5))                 # given back: first of its priority, not of all
    assert len(q) == 7 and [n for n, _ in q] == ["d", "back", "b", "e", "f", "a", "c"]
    assert [q.popleft()[0] for _ in range(3)] == ["d", "back", "b"]
    q.append(("g", 7))                        # a higher one arriving later goes ahead
    assert [n for n, _ in q.take_if(lambda it: it[0] in ("a", "g"))] == ["g", "a"]
    assert [q.popleft()[0] for _ in range(len(q))] == ["e", "f", "c"]
    assert not q
    with pytest.raises(IndexError):
        q.popleft()


def _queue_tasks(sim: Sim, tasks: list[tuple[bytes, int | None]]) -> None:
    for msgid, p in tasks:
        prio = [] if p is None else [str(p).encode()]
        sim.cmd(A, F.TASK, b"svc", msgid, *prio, b"body " + msgid)


def test_queued_tasks_go_out_highest_priority_first():
    sim = Sim()
    sim.hello(A)
    # None: a sender without the priority frame (older than it): priority 0
    _queue_tasks(sim, [(b"t1", None), (b"t2", 3), (b"t3", 9), (b"t4", 0), (b"t5", 3), (b"t6", None)])
    assert len(sim.got(A, F.QUEUED)) == 6
    sim.serve(N1)
    order = []
    for _ in range(6):
        _, tag, body = sim.deliveries(N1)[-1]
        order.append(body.split()[1])
        sim.cmd(N1, F.ACK, tag)
    assert order == [b"t3", b"t2", b"t5", b"t1", b"t4", b"t6"]


def test_a_requeued_task_keeps_the_front_of_its_priority():
    sim = Sim()
    sim.hello(A)
    _queue_tasks(sim, [(b"hi", 5), (b"lo", 1), (b"hi2", 5), (b"top", 8)])
    sim.serve(N1)
    _, tag, body = sim.deliveries(N1)[-1]
    assert body == b"body top"
    sim.cmd(N1, F.ACK, tag)
    _, tag, body = sim.deliveries(N1)[-1]
    assert body == b"body hi"
    sim.cmd(N1, F.NACK, tag, b"1")            # given back: ahead of hi2, behind nothing new
    _queue_tasks(sim, [(b"hi3", 5)])
    got = []
    for _ in range(4):
        _, tag, body = sim.deliveries(N1)[-1]
        got.append(body.split()[1])
        sim.cmd(N1, F.ACK, tag)
    assert got == [b"hi", b"hi2", b"hi3", b"lo"]


def test_work_of_a_dead_replica_goes_back_to_the_front_of_its_priority():
    sim = Sim()
    sim.hello(A)
    sim.serve(N1, prefetch=2)
    _queue_tasks(sim, [(b"a", 4), (b"b", 2)])     # both delivered to N1 at once
    _queue_tasks(sim, [(b"c", 4), (b"d", 2), (b"e", 6)])
    sim.now = 10.0
    sim.hello(A)
    sim.tick(10.0)                                  # N1 missed its heartbeats
    sim.serve(N2, prefetch=1)
    got = []
    for _ in range(5):
        _, tag, body = sim.deliveries(N2)[-1]
        got.append(body.split()[1])
        sim.cmd(N2, F.ACK, tag)
    assert got == [b"e", b"a", b"c", b"b", b"d"]


def test_a_bad_priority_frame_is_malformed_and_queues_nothing():
    sim = Sim()
    sim.hello(A)
    sim.serve(N1)
    for bad in (b"", b"10", b"x", b"-1", b" 1"):
        sim.cmd(A, F.TASK, b"svc", b"t", bad, b"body")
    assert sim.state.stats["malformed"] == 5
    assert [f[0] for f in sim.got(A, F.PROTOCOL)] == [b"t"] * 5
    assert sim.deliveries(N1) == [] and sim.got(A, F.QUEUED) == []


def test_a_replayed_task_takes_its_priority_frame():
    sim = Sim()
    sim.hello(A)
    sim.serve(N1)
    _queue_tasks(sim, [(b"dead", 2)])
    sim.cmd(N1, F.BURY, sim.deliveries(N1)[-1][1], b"{}")
    sim.cmd(A, F.TASK, b"svc", b"busy", b"body busy")      # holds N1's one credit
    _queue_tasks(sim, [(b"low", 1)])
    sim.cmd(A, F.REPLAY, b"r1", b"svc", b"dead", b"7", b"body dead")
    sim.cmd(A, F.REPLAY, b"r2", b"svc", b"dead", b"x", b"body dead")
    assert sim.got(A, F.REPLAYED) == [[b"r1", b"1"], [b"r2", b"0"]]
    assert sim.state.stats["malformed"] == 1
    sim.cmd(N1, F.ACK, sim.deliveries(N1)[-1][1])
    assert sim.deliveries(N1)[-1][2] == b"body dead"


# ---------------------------------------------------------------- streamed calls


def _streaming_call(sim: Sim) -> bytes:
    sim.hello(A)
    sim.serve(N1)
    sim.cmd(A, F.CALL, b"svc", b"c1", b"the call")
    return sim.deliveries(N1)[-1][1]


def test_items_go_to_the_caller_and_only_the_reply_settles_the_call():
    sim = Sim()
    tag = _streaming_call(sim)
    sim.cmd(A, F.CALL, b"svc", b"c2", b"second call")   # waits: N1's one credit is spent
    for body in (b"item 0", b"beat 1", b"item 1"):
        sim.cmd(N1, F.ITEM, tag, body)
    assert sim.got(A, F.ANSWER) == [[b"item 0"], [b"beat 1"], [b"item 1"]]
    assert len(sim.deliveries(N1)) == 1                  # no credit came back
    assert tag in sim.state.peers[N1].inflight
    sim.cmd(N1, F.REPLY, tag, b"reply 2")
    assert sim.got(A, F.ANSWER)[-1] == [b"reply 2"]
    assert [d[2] for d in sim.deliveries(N1)] == [b"the call", b"second call"]
    sim.cmd(N1, F.ITEM, tag, b"late item")               # settled: dropped, not forwarded
    assert sim.got(A, F.ANSWER)[-1] == [b"reply 2"] and sim.state.stats["dropped"] == 1


def test_a_replica_that_dies_mid_stream_gets_its_caller_unreachable():
    sim = Sim()
    tag = _streaming_call(sim)
    sim.cmd(N1, F.ITEM, tag, b"item 0")
    sim.now = 10.0
    sim.hello(A)
    sim.tick(10.0)                                       # N1 missed its heartbeats
    assert [f[0] for f in sim.got(A, F.UNREACHABLE)] == [b"c1"]


def test_an_item_for_a_cast_or_over_the_limit_is_malformed():
    sim = Sim(max_message_size=100)
    tag = _streaming_call(sim)
    sim.cmd(N1, F.ITEM, tag, b"x" * 101)
    assert sim.state.stats["oversized"] == 1 and sim.got(N1, F.PROTOCOL)[-1][0] == b"c1"
    sim.cmd(N1, F.REPLY, tag, b"reply")
    sim.cmd(A, F.CAST, b"svc", b"k1", b"a cast")
    cast_tag = sim.deliveries(N1)[-1][1]
    sim.cmd(N1, F.ITEM, cast_tag, b"item 0")
    assert sim.state.stats["malformed"] == 2
    assert sim.got(A, F.ANSWER) == [[b"reply"]]
    assert cast_tag in sim.state.peers[N1].inflight      # still the node's to settle


def _routes(sim: Sim, service: bytes = b"svc") -> dict[str, Any]:
    sim.cmd(A, F.ROUTES, b"r", service)
    reqid, body = sim.got(A, F.REPLICAS)[-1]
    assert reqid == b"r"
    return json.loads(body)


def test_routes_list_the_live_replicas_direct_endpoints_in_rotation_order():
    sim = Sim(heartbeat=1.0, liveness=3)
    sim.hello(A)
    assert _routes(sim) == {"replicas": 0, "direct": []}
    for ident, port in ((N1, 1), (N2, 2)):
        sim.hello(ident)
        info = {"direct": {"endpoint": f"tcp://127.0.0.1:{port}", "key": f"k{port}"}}
        sim.cmd(ident, F.SERVE, b"svc", b"8", json.dumps(info).encode())
    assert _routes(sim) == {"replicas": 2, "direct": [
        {"endpoint": "tcp://127.0.0.1:1", "key": "k1", "prefetch": 8},
        {"endpoint": "tcp://127.0.0.1:2", "key": "k2", "prefetch": 8}]}
    sim.cmd(A, F.DISCOVER, b"d")                   # discovery does not show endpoints
    (listed,) = json.loads(sim.got(A, F.SERVICES)[-1][1])
    assert "direct" not in listed and listed["replicas"] == 2
    sim.cmd(N1, F.UNSERVE, b"svc")                 # a replica that leaves is not listed
    assert [d["endpoint"] for d in _routes(sim)["direct"]] == ["tcp://127.0.0.1:2"]
    sim.cmd(A, F.HEARTBEAT)
    sim.tick(5.0)                                  # nor one that missed its heartbeats
    assert _routes(sim) == {"replicas": 0, "direct": []}


def test_routes_count_a_replica_without_an_endpoint():
    sim = Sim()
    sim.serve(N1)                                  # announced no endpoint
    sim.hello(N2)
    sim.cmd(N2, F.SERVE, b"svc", b"1", b'{"direct": {"endpoint": "tcp://127.0.0.1:9"}}')
    sim.hello(A)
    assert _routes(sim) == {"replicas": 2, "direct": [
        {"endpoint": "tcp://127.0.0.1:9", "key": "", "prefetch": 1}]}


def test_welcome_tells_the_allow_list_when_there_is_one():
    sim = Sim()
    sim.hello(A)
    assert "allow" not in json.loads(sim.got(A, F.WELCOME)[-1][0])
    sim.state.allow = ["k" * 40]
    sim.hello(A)
    assert json.loads(sim.got(A, F.WELCOME)[-1][0])["allow"] == ["k" * 40]
