"""URL options, backoff, topology names, confirm waits, dead bodies, lazy import: no
broker needed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
from types import SimpleNamespace

import pytest

from vertebra.transports.amqp.confirms import Confirms
from vertebra.transports.amqp.connection import LoopConnection
from vertebra.transports.amqp.deadletters import _dead_letter, dead_body
from vertebra.transports.amqp.delays import not_yet_ms, strip_deaths
from vertebra.transports.amqp.options import parse_url
from vertebra.transports.amqp.topology import (
    DELAY_HEADER,
    MAX_DELAY_MS,
    REDELIVERIES_HEADER,
    Topology,
    delay_ttl,
    priority_mismatch,
)
from vertebra.wire.codec import get_codec
from vertebra.wire.deadletter import DEAD_ERROR_HEADER
from vertebra.wire.envelope import Envelope
from vertebra.wire.errors import wire_error


def test_url_defaults_and_vhost():
    o = parse_url("amqp://u:p%40ss@example.org/my%2Fvhost")
    assert (o.host, o.port, o.user, o.password, o.vhost) == ("example.org", 5672, "u", "p@ss", "my/vhost")
    assert not o.tls and o.ssl == {} and o.max_redeliveries == 10 and o.prefix == ""
    assert (o.confirm_timeout, o.settle) == (10.0, 15.0)
    assert parse_url("amqp://h").vhost == "/"
    assert parse_url("amqp://h/%2F").vhost == "/"


def test_url_parameters():
    o = parse_url("amqp://h:1234/?prefix=staging.&max_redeliveries=5&heartbeat=0&expires=1000"
                  "&confirm_timeout=2.5&settle=0")
    assert (o.port, o.prefix, o.max_redeliveries, o.heartbeat, o.expires_ms, o.confirm_timeout,
            o.settle) == (1234, "staging.", 5, 0, 1000, 2.5, 0.0)
    with pytest.raises(ValueError, match="unknown"):
        parse_url("amqp://h/?prefetch=3")


def test_max_attempts_is_refused_with_where_it_went():
    with pytest.raises(ValueError, match=r"@task\(max_attempts=N\)"):
        parse_url("amqp://h/?max_attempts=3")


def test_amqps_ssl_options():
    o = parse_url("amqps://h/?cafile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&server_hostname=broker")
    assert o.port == 5671 and o.tls
    assert o.ssl == {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": "/ca.pem", "certfile": "/c.pem",
                     "keyfile": "/k.pem", "server_hostname": "broker"}
    assert parse_url("amqps://h/?verify=0").ssl == {"cert_reqs": ssl.CERT_NONE}
    assert parse_url("amqps://h/").ssl_for("h")["server_hostname"] == "h"
    several = parse_url("amqps://a,b:5673/")               # each broker's own name is checked
    assert [several.ssl_for(h)["server_hostname"] for h, _ in several.brokers] == ["a", "b"]
    assert parse_url("amqp://h").ssl_for("h") is False


def test_a_url_naming_several_brokers():
    o = parse_url("amqp://u:p@h1:5672,h2:5673,h3,[::1]:5674/vh?prefix=x.")
    assert o.brokers == (("h1", 5672), ("h2", 5673), ("h3", 5672), ("::1", 5674))
    assert o.addresses == ["h1:5672", "h2:5673", "h3:5672", "[::1]:5674"]
    assert (o.host, o.port, o.user, o.password, o.vhost) == ("h1", 5672, "u", "p", "vh")
    assert parse_url("amqps://a,b/").brokers == (("a", 5671), ("b", 5671))
    with pytest.raises(ValueError, match="bad port"):
        parse_url("amqp://h1:56x,h2/")


def test_queue_type_is_quorum_for_several_brokers_unless_told():
    assert parse_url("amqp://h/").queue_type == "classic" and not parse_url("amqp://h/").quorum
    assert parse_url("amqp://a,b/").quorum
    assert parse_url("amqp://h/?queue_type=quorum").quorum
    assert not parse_url("amqp://a,b/?queue_type=classic").quorum
    with pytest.raises(ValueError, match="queue_type"):
        parse_url("amqp://h/?queue_type=stream")
    quorum = Topology("p.", quorum=True)
    assert quorum.task_arguments("s")["x-queue-type"] == "quorum"
    assert "x-max-priority" not in quorum.task_arguments("s")    # quorum queues refuse it
    assert quorum.dead_arguments() == {"x-queue-type": "quorum"}
    assert "x-queue-type" not in Topology("p.").task_arguments("s")


async def test_reconnecting_starts_with_the_broker_after_the_one_lost(monkeypatch):
    import vertebra.transports.amqp.connection as connection

    starts: list[int] = []

    def fake_connect_any(opts, start, **callbacks):
        starts.append(start)
        raise ConnectionError("nobody")

    monkeypatch.setattr(connection, "connect_any", fake_connect_any)
    conn = LoopConnection(parse_url("amqp://a,b,c/?reconnect_max=0.01"), print, print, {})
    conn._loop = asyncio.get_running_loop()
    conn.broker = 1
    task = asyncio.ensure_future(conn._reconnect())
    while len(starts) < 2:
        await asyncio.sleep(0.005)
    await conn.close()
    task.cancel()
    assert starts[:2] == [2, 2]          # each attempt tries all, from the next one round


def test_connect_any_tries_each_broker_once_in_ring_order(monkeypatch):
    import vertebra.transports.amqp.dial as dial

    tried: list[int] = []

    def fake_new(opts, index, **callbacks):
        tried.append(index)
        if index != 0:
            raise OSError("refused")
        return "conn"

    monkeypatch.setattr(dial, "new_connection", fake_new)
    opts = parse_url("amqp://a,b,c/")
    assert dial.connect_any(opts, 1) == ("conn", 0) and tried == [1, 2, 0]
    tried.clear()
    monkeypatch.setattr(dial, "new_connection", lambda o, i, **c: (_ for _ in ()).throw(OSError(i)))
    with pytest.raises(ConnectionError, match=r"a:5672.*b:5672.*c:5672"):
        dial.connect_any(opts, 0)


def test_reconnects_use_the_one_backoff_capped_at_reconnect_max():
    conn = LoopConnection(parse_url("amqp://h/?reconnect_max=2"), print, print, {})
    assert (conn.backoff.base, conn.backoff.cap) == (0.1, 2.0)
    assert conn.backoff.delay(3) <= 0.8 and conn.backoff.delay(50) <= 2.0


def _fake_channel() -> SimpleNamespace:
    ch = SimpleNamespace(confirm_select=lambda: None, closed=False,
                         events={"basic_ack": set(), "basic_nack": set(), "basic_return": set()})
    ch.close = lambda: setattr(ch, "closed", True)
    return ch


def _fire(ch, event: str, tag: int, multiple: bool) -> None:
    for callback in list(ch.events[event]):
        callback(tag, multiple)


class _FakeLink:
    """What Confirms needs of a Link, with a publish that goes nowhere."""

    def __init__(self, confirm_timeout: float) -> None:
        self.opts = parse_url(f"amqp://h/?confirm_timeout={confirm_timeout}")
        self.stats = {"confirm_timeouts": 0, "nacked": 0}
        self.loop = asyncio.get_running_loop()
        self.ch_pub = _fake_channel()
        self.opened: list[SimpleNamespace] = []
        self.conn = SimpleNamespace(conn=SimpleNamespace(channel=self._channel),
                                    direct=contextlib.nullcontext)
        self.inbox: list = []
        self.published: list[tuple[object, bytes]] = []

    def _channel(self) -> SimpleNamespace:
        self.opened.append(_fake_channel())
        return self.opened[-1]

    async def ready(self) -> None:
        pass

    def guard(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    sync = guard

    def publish(self, ch, body, exchange, key, **props):
        self.published.append((ch, body))


async def test_a_confirm_that_never_comes_fails_the_send_with_connection_error():
    link = _FakeLink(confirm_timeout=0.05)
    confirms = Confirms(link)
    confirms.attach(link.ch_pub)
    with pytest.raises(ConnectionError, match="no confirm"):
        await confirms.publish(b"x", "", "q")
    assert link.stats["confirm_timeouts"] == 1 and len(confirms) == 0
    _fire(link.ch_pub, "basic_ack", 1, False)        # a late confirm is ignored


async def test_confirms_settle_one_many_and_fail_on_nack_and_loss():
    link = _FakeLink(confirm_timeout=3600)
    confirms = Confirms(link)
    confirms.attach(link.ch_pub)
    ran: list[int] = []
    sends = [asyncio.ensure_future(confirms.publish(b"x", "", "q", then=lambda i=i: ran.append(i)))
             for i in range(5)]
    await asyncio.sleep(0)
    assert len(confirms) == 5
    _fire(link.ch_pub, "basic_ack", 2, True)         # tags 1 and 2
    _fire(link.ch_pub, "basic_nack", 3, False)
    confirms.fail_all(ConnectionError("lost"))
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert results[:2] == [None, None] and ran == [0, 1]
    assert [str(r) for r in results[2:]] == ["the broker refused the message (nack)", "lost", "lost"]
    assert len(confirms) == 0


async def test_a_nack_moves_publishing_to_a_new_channel_and_the_old_one_closes_when_settled():
    # The quorum-queue trap: a channel that got a nack keeps getting them; use a new one.
    link = _FakeLink(confirm_timeout=3600)
    confirms = Confirms(link)
    old = link.ch_pub
    confirms.attach(old)
    first = [asyncio.ensure_future(confirms.publish(b"a", "", "q")) for _ in range(2)]
    await asyncio.sleep(0)
    _fire(old, "basic_nack", 1, False)
    _fire(old, "basic_nack", 1, False)               # a repeated nack renews once
    assert len(link.inbox) == 1
    link.inbox.pop()()                               # run where py-amqp may block: renewed
    [new] = link.opened
    assert link.stats["channels_renewed"] == 1 and link.ch_pub is new and not old.closed
    later = asyncio.ensure_future(confirms.publish(b"b", "", "q"))
    await asyncio.sleep(0)
    assert link.published[-1] == (new, b"b")
    _fire(new, "basic_ack", 1, False)                # tags count from 1 on the new channel
    _fire(old, "basic_ack", 2, False)                # the old channel's last confirm
    results = await asyncio.gather(*first, later, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["ConnectionError", "NoneType", "NoneType"]
    await asyncio.sleep(0)
    assert old.closed and not new.closed and len(confirms) == 0


def test_a_dead_body_keeps_the_error_and_reads_back_as_a_dead_letter():
    codec = get_codec("json")
    env = Envelope("task", service="jobs", method="run", args=["a"], headers={"attempt": "3"})
    error = wire_error("remote", "RuntimeError", "broken", "x" * 20000)
    body = dead_body(codec, env, error)
    msg = SimpleNamespace(body=body, properties={"application_headers": {REDELIVERIES_HEADER: 2}})
    dead = _dead_letter(msg)
    assert dead is not None
    assert (dead.id, dead.method, dead.args, dead.attempts) == (env.id, "run", ["a"], 3)
    assert (dead.error["type"], dead.error["message"], dead.error["redeliveries"]) == \
        ("RuntimeError", "broken", 2)
    assert len(dead.error["traceback"]) < 10000                     # capped, end kept
    replay = dead.replay_envelope()
    assert DEAD_ERROR_HEADER not in replay.headers and "attempt" not in replay.headers
    rejected = SimpleNamespace(body=codec.encode(env), properties={
        "application_headers": {"x-death": [{"reason": "rejected", "queue": "q"}]}})
    assert _dead_letter(rejected).error["type"] == "Rejected"
    assert _dead_letter(SimpleNamespace(body=b"garbage", properties={})) is None
    assert json.loads(body)["headers"][DEAD_ERROR_HEADER]


def test_topology_names_carry_the_prefix():
    t = Topology("p.", expires_ms=500)
    assert t.call_queue("calc") == "p.vertebra.call.calc"
    assert t.task_queue("calc") == "p.vertebra.task.calc"
    assert t.task_arguments("calc") == {"x-dead-letter-exchange": "p.vertebra.dlx",
                                        "x-dead-letter-routing-key": "p.vertebra.dead.calc",
                                        "x-max-priority": 9, "x-expires": 500}
    assert "x-max-priority" not in t.task_arguments("calc", priority=False)
    assert t.exchanges() == [("p.vertebra.events", "topic"), ("p.vertebra.discovery", "fanout"),
                             ("p.vertebra.dlx", "direct"), ("p.vertebra.delay", "headers")]


def test_importing_vertebra_does_not_import_amqp():
    code = "import sys, vertebra; assert 'amqp' not in sys.modules, 'amqp imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_delay_ttls_round_up_to_three_significant_digits():
    assert [delay_ttl(ms) for ms in (0, 0.2, 1, 999, 999.1, 1000, 1001, 8003.2, 99951, 123456)] == \
        [1, 1, 1, 999, 1000, 1000, 1010, 8010, 100000, 124000]
    for ms in (1.5, 17.01, 4321.9, 86_400_001, 3_600_000.5):
        ttl = delay_ttl(ms)
        assert ms <= ttl <= ms * 1.01 + 1 and len(str(ttl).rstrip("0")) <= 3   # never early
    assert delay_ttl(MAX_DELAY_MS * 3) == MAX_DELAY_MS                         # then again


def test_delay_queues_and_their_arguments():
    classic, quorum = Topology("p."), Topology("p.", quorum=True)
    assert classic.delay_queue(8000) == "p.vertebra.delay.8000"
    assert classic.delay_arguments(8000) == {"x-message-ttl": 8000, "x-dead-letter-exchange": "",
                                             "x-expires": 8000 + 3_600_000}
    assert quorum.delay_arguments(8000) == {**classic.delay_arguments(8000),
                                            "x-queue-type": "quorum",
                                            "x-dead-letter-strategy": "at-least-once",
                                            "x-overflow": "reject-publish"}
    assert classic.delay_binding(8000) == {"x-match": "all", DELAY_HEADER: "8000"}
    assert not DELAY_HEADER.startswith("x-")      # a headers exchange ignores x- headers


def test_what_counts_as_a_priority_mismatch_and_as_early():
    assert priority_mismatch(Exception("Queue.declare: (406) PRECONDITION_FAILED - inequivalent "
                                       "arg 'x-max-priority' for queue 'q' in vhost '/'"))
    assert not priority_mismatch(Exception("Queue.declare: (406) PRECONDITION_FAILED - "
                                           "inequivalent arg 'x-queue-type' for queue 'q'"))
    env = Envelope("task", service="s", method="m", not_before=100.0)
    assert not_yet_ms(env, now=99.5) == 500.0 and not_yet_ms(env, now=101) == 0.0
    assert not_yet_ms(Envelope("task", service="s", method="m")) == 0.0
    assert strip_deaths({"x-death": [], "x-first-death-queue": "q", DELAY_HEADER: "1",
                         REDELIVERIES_HEADER: 2, "a": "b"}) == {REDELIVERIES_HEADER: 2, "a": "b"}


async def test_a_returned_mandatory_publish_fails_and_its_then_does_not_run():
    link = _FakeLink(confirm_timeout=3600)
    confirms = Confirms(link)
    confirms.attach(link.ch_pub)
    ran: list[str] = []
    sends = [asyncio.ensure_future(confirms.publish(b"x", "ex", "q", then=lambda m=m: ran.append(m),
                                                    mandatory=True, message_id=m))
             for m in ("returned", "routed")]
    await asyncio.sleep(0)
    for callback in list(link.ch_pub.events["basic_return"]):   # the return comes before the ack
        callback(SimpleNamespace(reply_text="NO_ROUTE"), "ex", "q",
                 SimpleNamespace(properties={"message_id": "returned"}))
    _fire(link.ch_pub, "basic_ack", 2, True)
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert isinstance(results[0], ConnectionError) and "NO_ROUTE" in str(results[0])
    assert results[1] is None and ran == ["routed"]


def test_a_quorum_url_has_no_priorities_but_holds_delays():
    from vertebra.transports.amqp import AmqpTransport

    classic = AmqpTransport("amqp://h/", get_codec("json"))
    quorum = AmqpTransport("amqp://h/?queue_type=quorum", get_codec("json"))
    assert classic.capabilities.priorities and classic.capabilities.holds_delayed
    assert not quorum.capabilities.priorities and quorum.capabilities.holds_delayed
    assert type(quorum).capabilities.priorities                 # the class sheet is untouched
