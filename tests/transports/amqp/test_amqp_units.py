"""URL options, backoff, topology names, lazy import: no broker needed."""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest

from vertebra.transports.amqp.connection import backoff_delay
from vertebra.transports.amqp.options import parse_url
from vertebra.transports.amqp.topology import Topology


def test_url_defaults_and_vhost():
    o = parse_url("amqp://u:p%40ss@example.org/my%2Fvhost")
    assert (o.host, o.port, o.user, o.password, o.vhost) == ("example.org", 5672, "u", "p@ss", "my/vhost")
    assert not o.tls and o.ssl == {} and o.max_attempts == 3 and o.prefix == ""
    assert parse_url("amqp://h").vhost == "/"
    assert parse_url("amqp://h/%2F").vhost == "/"


def test_url_parameters():
    o = parse_url("amqp://h:1234/?prefix=staging.&max_attempts=5&heartbeat=0&expires=1000")
    assert (o.port, o.prefix, o.max_attempts, o.heartbeat, o.expires_ms) == (1234, "staging.", 5, 0, 1000)
    with pytest.raises(ValueError, match="unknown"):
        parse_url("amqp://h/?prefetch=3")


def test_amqps_ssl_options():
    o = parse_url("amqps://h/?cafile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&server_hostname=broker")
    assert o.port == 5671 and o.tls
    assert o.ssl == {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": "/ca.pem", "certfile": "/c.pem",
                     "keyfile": "/k.pem", "server_hostname": "broker"}
    assert parse_url("amqps://h/?verify=0").ssl == {"cert_reqs": ssl.CERT_NONE}
    assert parse_url("amqps://h/").ssl["server_hostname"] == "h"


def test_backoff_grows_caps_and_jitters():
    assert backoff_delay(0, rand=lambda: 0.0) == pytest.approx(0.05)
    assert backoff_delay(0, rand=lambda: 1.0) == pytest.approx(0.1)
    assert backoff_delay(3, rand=lambda: 1.0) == pytest.approx(0.8)
    assert backoff_delay(50, cap=5.0, rand=lambda: 1.0) == pytest.approx(5.0)
    assert backoff_delay(50, cap=5.0, rand=lambda: 0.0) == pytest.approx(2.5)


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
