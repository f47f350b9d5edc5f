"""URL options, backoff, topology names, confirm waits, dead bodies, lazy import: no
broker needed."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from types import SimpleNamespace

import pytest

from vertebra.transports.amqp.confirms import Confirms
from vertebra.transports.amqp.connection import LoopConnection
from vertebra.transports.amqp.deadletters import _dead_letter, dead_body
from vertebra.transports.amqp.options import parse_url
from vertebra.transports.amqp.topology import REDELIVERIES_HEADER, Topology
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
    assert parse_url("amqps://h/").ssl["server_hostname"] == "h"


def test_reconnects_use_the_one_backoff_capped_at_reconnect_max():
    conn = LoopConnection(parse_url("amqp://h/?reconnect_max=2"), print, print, {})
    assert (conn.backoff.base, conn.backoff.cap) == (0.1, 2.0)
    assert conn.backoff.delay(3) <= 0.8 and conn.backoff.delay(50) <= 2.0


class _FakeLink:
    """What Confirms needs of a Link, with a publish that goes nowhere."""

    def __init__(self, confirm_timeout: float) -> None:
        self.opts = parse_url(f"amqp://h/?confirm_timeout={confirm_timeout}")
        self.stats = {"confirm_timeouts": 0, "nacked": 0}
        self.loop = asyncio.get_running_loop()
        self.ch_pub = SimpleNamespace(confirm_select=lambda: None,
                                      events={"basic_ack": set(), "basic_nack": set()})
        self.published: list[bytes] = []

    async def ready(self) -> None:
        pass

    def guard(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def publish(self, ch, body, exchange, key, **props):
        self.published.append(body)


async def test_a_confirm_that_never_comes_fails_the_send_with_connection_error():
    link = _FakeLink(confirm_timeout=0.05)
    confirms = Confirms(link)
    confirms.attach(link.ch_pub)
    with pytest.raises(ConnectionError, match="no confirm"):
        await confirms.publish(b"x", "", "q")
    assert link.stats["confirm_timeouts"] == 1 and len(confirms) == 0
    confirms._on_ack(1, False)                       # a late confirm is ignored


async def test_confirms_settle_one_many_and_fail_on_nack_and_loss():
    link = _FakeLink(confirm_timeout=3600)
    confirms = Confirms(link)
    confirms.attach(link.ch_pub)
    ran: list[int] = []
    sends = [asyncio.ensure_future(confirms.publish(b"x", "", "q", then=lambda i=i: ran.append(i)))
             for i in range(5)]
    await asyncio.sleep(0)
    assert len(confirms) == 5
    confirms._on_ack(2, True)                        # tags 1 and 2
    confirms._on_nack(3, False)
    confirms.fail_all(ConnectionError("lost"))
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert results[:2] == [None, None] and ran == [0, 1]
    assert [str(r) for r in results[2:]] == ["the broker refused the message (nack)", "lost", "lost"]
    assert len(confirms) == 0


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
                                        "x-expires": 500}
    assert [n for n, _ in t.exchanges()] == ["p.vertebra.events", "p.vertebra.discovery",
                                             "p.vertebra.dlx"]


def test_importing_vertebra_does_not_import_amqp():
    code = "import sys, vertebra; assert 'amqp' not in sys.modules, 'amqp imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
