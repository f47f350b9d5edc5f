"""The framework examples (examples/frameworks/) run as the servers they are — uvicorn,
Django's manage.py, gunicorn — in subprocesses, against a real zmq:// hub embedded in the
test process, which also serves the nodes they talk to (vertebra.testing's Harness)."""

from __future__ import annotations

import collections
import concurrent.futures
import re
import signal
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest

import vertebra
from vertebra.testing import Harness

from .conftest import run_example
from .frameworks_util import Server, example, free_port, wait_http, wait_until


@pytest.fixture
def hub() -> Iterator[vertebra.Hub]:
    with vertebra.Hub("tcp://127.0.0.1:0") as h:
        yield h


@pytest.fixture
def harness(hub: vertebra.Hub) -> Iterator[Harness]:
    with Harness(hub.url) as h:
        yield h


def http(port: int) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0)


# FastAPI ---------------------------------------------------------------------------------

def test_fastapi_lifespan_bus_calls_and_casts(hub: vertebra.Hub, harness: Harness) -> None:
    app = example("fastapi_app")
    port = free_port()
    with Server(sys.executable, "-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1",
                "--port", str(port), url=hub.url) as web, http(port) as client:
        web.wait_for("Uvicorn running on")          # after the lifespan opened the bus

        # no calc node yet: a call is a clear 503, and casts are accepted all the same
        r = client.get("/add", params={"a": 2, "b": 3})
        assert r.status_code == 503, r.text
        assert "calc" in r.json()["detail"]
        queued = [client.post(f"/jobs/job-{i}") for i in range(20)]
        assert [r.status_code for r in queued] == [202] * 20
        assert len({r.json()["queued"] for r in queued}) == 20          # 20 message ids

        calc = app.Calc()
        harness.served(calc)                                            # the node comes up
        wait_until("calc got 20 jobs", lambda: len(calc.crunched) >= 20)
        assert sorted(calc.crunched) == sorted(f"job-{i}" for i in range(20))
        r = client.get("/add", params={"a": 2, "b": 3})
        assert (r.status_code, r.json()) == (200, {"sum": 5})

        # casts, then SIGTERM straight away: the lifespan's bus closes, flushing the outbox
        assert all(client.post(f"/jobs/late-{i}").status_code == 202 for i in range(20))
        # uvicorn shuts down gracefully, then (since 0.29) re-raises the signal it caught
        assert web.terminate() in (0, -signal.SIGTERM), web.log
        web.wait_for("Application shutdown complete")
        closed = web.wait_for(r"vertebra bus closed: (\d+) sent, (\d+) unsent, (\d+) dropped")
        assert closed.groups() == ("40", "0", "0"), web.log
        wait_until("calc got 40 jobs", lambda: len(calc.crunched) >= 40)
        assert sorted(calc.crunched) == sorted([f"job-{i}" for i in range(20)]
                                               + [f"late-{i}" for i in range(20)])


def test_fastapi_example_runs_with_one_command() -> None:
    port = free_port()                 # its own embedded hub and calc node, then uvicorn
    with Server(sys.executable, "fastapi_app.py", "--port", str(port), url=None) as web, http(port) as client:
        r = wait_http(client, "/add?a=2&b=3", web)
        assert (r.status_code, r.json()) == (200, {"sum": 5})
        assert client.post("/jobs/j1").status_code == 202
        # uvicorn hands the SIGTERM it caught back to the handler before it, vertebra's
        # (its node bus was opened first, on the main thread): a normal exit, code 128 + 15
        assert web.terminate() in (0, 128 + signal.SIGTERM), web.log
        web.wait_for(r"vertebra bus closed: 1 sent, 0 unsent, 0 dropped")


# Django ----------------------------------------------------------------------------------

def manage(*args: str, url: str) -> Server:
    return Server(sys.executable, "manage.py", *args, url=url)


def test_django_views_call_and_cast_through_a_lazy_bus(hub: vertebra.Hub, harness: Harness) -> None:
    mailer = harness.record("mailer", answers={"send": "sent"})
    port = free_port()
    with manage("runserver", f"127.0.0.1:{port}", "--noreload", url=hub.url) as site, http(port) as client:
        r = wait_http(client, "/reports/ada", site)            # nobody serves reports yet
        assert (r.status_code, r.json()) == (503, {"error": "the reports service is not running"})

        with manage("servenodes", url=hub.url) as nodes:
            pid = nodes.wait_for(r"servenodes: serving reports on \S+ \(pid (\d+)\)").group(1)
            r = client.get("/reports/ada")                     # a call, answered by servenodes
            assert r.status_code == 200, r.text
            assert r.json() == {"report": f"monthly report for ada (rendered by pid {pid})"}

            r = client.post("/reports/ada/mail")                # a cast: 202 at once
            assert r.status_code == 202, r.text
            [sent] = mailer.wait_for(1, timeout=20)             # the task ran in servenodes
            assert sent.method == "send"
            assert sent.args == ("ada", f"monthly report for ada (rendered by pid {pid})")
            nodes.wait_for("mailed the report of ada")
            assert nodes.terminate() == 0, nodes.log


class GatedMailer(vertebra.Node):
    """A mailer that holds each call until the test opens the gate."""

    name = "mailer"

    def __init__(self) -> None:
        self.called = threading.Event()
        self.gate = threading.Event()

    @vertebra.rpc
    def send(self, customer: str, body: str) -> str:
        self.called.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return "sent"


def test_django_servenodes_drains_on_sigterm(hub: vertebra.Hub, harness: Harness) -> None:
    mailer = GatedMailer()
    harness.served(mailer)
    with manage("servenodes", "--drain-timeout", "30", url=hub.url) as nodes:
        nodes.wait_for("servenodes: serving reports")
        harness.client.proxy("reports").mail.cast("bob")
        assert mailer.called.wait(20), nodes.log                # the task is in flight, held
        nodes.send(signal.SIGTERM)
        nodes.wait_for("stopping: draining in-flight work")
        wait_until("reports to leave discovery",                # it takes no new work ...
                   lambda: "reports" not in {s.name for s in harness.client.nodes()})
        harness.client.proxy("reports").mail.cast("carol")      # ... so this waits in the hub
        assert harness.client.flush(10) == 0
        assert nodes.running(), nodes.log                      # ... and waits for bob's task
        mailer.gate.set()
        assert nodes.wait() == 0, nodes.log
        assert (nodes.line_of("stopping: draining in-flight work")
                < nodes.line_of("mailed the report of bob")
                < nodes.line_of("reports drained, stopped")), nodes.log
        assert "carol" not in nodes.log, nodes.log
        assert "raised" not in nodes.log, nodes.log             # no attempt failed
        assert "still running" not in nodes.log, nodes.log      # the drain waited for it


# gunicorn --preload ----------------------------------------------------------------------

def gunicorn(*args: str, port: int, url: str) -> Server:
    return Server(sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", *args, url=url)


def get_reports(client: httpx.Client, first: int, count: int) -> list[httpx.Response]:
    """``count`` requests, 6 at a time (so that the sync workers share them)."""
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        return list(pool.map(lambda n: client.get("/report", params={"n": n}), range(first, first + count)))


def test_gunicorn_preload_workers_each_open_their_bus(hub: vertebra.Hub, harness: Harness) -> None:
    collector = example("gunicorn_app").Collector()
    assert collector.dedup_window == 60                         # duplicates would be dropped
    harness.served(collector)
    port = free_port()
    with gunicorn("-c", "gunicorn_conf.py", "gunicorn_app:app", port=port, url=hub.url) as web, \
            http(port) as client:
        opened = r"worker (\d+): vertebra bus opened after the fork"
        wait_until("3 workers to open their bus", lambda: len(web.matches(opened)) >= 3)
        workers = {int(m.group(1)) for m in web.matches(opened)}
        assert len(workers) == 3 and web.pid not in workers, web.log

        responses = [wait_http(client, "/report?n=0", web)]
        while {r.json()["pid"] for r in responses} != workers and len(responses) < 600:
            responses += get_reports(client, len(responses), 30)   # until every worker answered
        n = len(responses)
        assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses if r.is_error]
        answers = [r.json() for r in responses]
        assert {a["pid"] for a in answers} == workers, collections.Counter(a["pid"] for a in answers)

        ids = [a["id"] for a in answers]
        assert len(set(ids)) == n                              # no id minted twice ...
        prefixes = collections.defaultdict(set)
        for a in answers:
            prefixes[a["pid"]].add(a["id"][:16])                # ... each worker drew its own prefix
        assert all(len(p) == 1 for p in prefixes.values()), prefixes
        assert len(set().union(*prefixes.values())) == 3, prefixes

        # stopped straight after the last answer: each worker flushes its outbox as it exits
        assert web.terminate() == 0, web.log
        assert len(web.matches(r"Worker exiting \(pid: \d+\)")) == 3, web.log
        wait_until(lambda: f"the collector to get {n} reports (it has {len(collector.reports)})",
                   lambda: len(collector.reports) >= n)
        assert collector.reports == {i: a["pid"] for i, a in enumerate(answers)}   # n of n


def test_gunicorn_bus_opened_before_the_fork_fails_loudly(hub: vertebra.Hub) -> None:
    port = free_port()
    with gunicorn("--preload", "-w", "2", "--no-control-socket", "gunicorn_wrong:app",
                  port=port, url=hub.url) as web, http(port) as client:
        r = wait_http(client, "/report?n=1", web)
        assert r.status_code == 500, r.text
        answer = r.json()
        assert answer["pid"] != web.pid                        # a worker answered
        assert answer["error"].startswith("RuntimeError: this bus was opened before os.fork()"), answer
        assert "Open a new bus in the child" in answer["error"]
        assert {r.status_code for r in get_reports(client, 2, 12)} == {500}    # every request
        web.wait_for(r"^RuntimeError: this bus was opened before os\.fork\(\)")  # gunicorn's error log
        web.wait_for(r"Traceback \(most recent call last\)")
        assert web.terminate() == 0, web.log                   # the master's own bus is fine


def test_gunicorn_example_runs_with_one_command() -> None:
    out = run_example("frameworks/gunicorn_app.py", "--requests", "60", "--port", str(free_port()))
    answered = re.search(r"^60 requests answered by (\d) workers: (\{.*\})$", out, re.M)
    assert answered, out
    assert sum(int(n) for n in re.findall(r": (\d+)", answered.group(2))) == 60
    assert "collector received 60 of 60 reports" in out, out
