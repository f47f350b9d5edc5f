"""The streaming and delayed-task examples (issue 18), run end to end as subprocesses in a
fresh interpreter, on the embedded default (a ZeroMQ hub the example starts), on
RabbitMQ and on XMPP, checking what they print."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from .conftest import run_example

AmqpUrl = Callable[..., str]
XmppUrl = Callable[[str], str]

WINDOW = 32              # the bus's default stream_window, which the example keeps
CHUNK = 64 * 1024


# stream_file ---------------------------------------------------------------------------

def check_stream_file(out: str, size_mb: int) -> None:
    total = size_mb * 1024 * 1024 // CHUNK
    got = re.search(r"^streamed big\.bin: (\d+) chunks, ([\d,]+) bytes in [\d.]+ s", out, re.M)
    assert got, out
    assert int(got.group(1)) == total, got.group(0)
    assert int(got.group(2).replace(",", "")) == size_mb * 1024 * 1024, got.group(0)
    assert re.search(r"^sha256 [0-9a-f]{64} matches the node's$", out, re.M), out
    early = re.search(r"^stopped after (\d+) chunks: the node had read (\d+) of (\d+) \(window (\d+)\), "
                      r"generator closed: (\w+), finished: (\w+)$", out, re.M)
    assert early, out
    taken, read, of, window = (int(early.group(i)) for i in range(1, 5))
    assert (taken, of, window) == (3, total, WINDOW), early.group(0)
    # back-pressure: never more than a window ahead of what was taken (+1: the item the
    # node may hold while it waits for credit); the generator was closed, not run out
    assert taken <= read <= WINDOW + 1 < total, early.group(0)
    assert (early.group(5), early.group(6)) == ("True", "False"), early.group(0)


def test_stream_file_embedded() -> None:
    check_stream_file(run_example("stream_file.py", "--size-mb", "8"), 8)


def test_stream_file_amqp(amqp_url: AmqpUrl) -> None:
    check_stream_file(run_example("stream_file.py", "--size-mb", "8", "--url", amqp_url("files")), 8)


def test_stream_file_on_xmpp(xmpp_url: XmppUrl) -> None:
    check_stream_file(run_example("stream_file.py", "--size-mb", "4", "--url", xmpp_url("files")), 4)


# reminder ------------------------------------------------------------------------------

SIGNUPS = ("ada@example.com", "bob@example.com", "cy@example.com")


def check_reminder(out: str, held: int) -> None:
    lines = out.splitlines()
    posts = [i for i, line in enumerate(lines) if line.startswith("POST ")]
    signups = [lines[i] for i in posts if lines[i].startswith("POST /signup")]
    assert len(signups) == 3 and all(" -> 202 Accepted in " in s for s in signups), out
    assert re.search(r"^POST /unsubscribe\?email=bob@example\.com -> 200 OK in .*: "
                     r"bob@example\.com: reminder \S+ cancelled$", out, re.M), out
    ids = dict(re.findall(r"welcome (\S+): reminder (\S+) due in", out))
    assert set(ids) == set(SIGNUPS), out
    assert f"held by {'the outbox' if held else 'the broker'}: {held} delayed in the outbox" in out

    mailed = [line for line in lines if line.startswith("mailer: ")]
    assert len(mailed) == 2, out
    assert min(i for i, line in enumerate(lines) if line.startswith("mailer: ")) > max(posts), \
        "a reminder ran before the app had answered its requests"
    for who in ("ada@example.com", "cy@example.com"):
        line = next((m for m in mailed if m.startswith(f"mailer: to {who}:")), None)
        assert line, out
        assert "(late by " in line and f"message {ids[who]}, attempt 1)" in line, line
    assert re.search(r"^sent 2 reminders in [\d.]+ s: ada@example\.com, cy@example\.com$", out, re.M), out
    assert "run early: 0" in out
    assert "bob@example.com sent: False, revoked on the node: 1" in out


def check_spool(out: str, held: int) -> None:
    keeper = f"its spool outbox.db keeps {held}" if held else "the broker keeps them"
    assert f"web app stopped before the reminders were due; {keeper}" in out, out
    assert f"web app restarted: {held} restored from the spool" in out, out


def test_reminder_embedded() -> None:
    check_reminder(run_example("reminder.py"), held=3)


def test_reminder_spool_embedded() -> None:
    out = run_example("reminder.py", "--spool")
    check_reminder(out, held=3)
    check_spool(out, held=3)


@pytest.mark.parametrize("spool", [False, True], ids=["outbox", "spool"])
def test_reminder_amqp(amqp_url: AmqpUrl, spool: bool) -> None:
    # RabbitMQ holds delayed tasks itself (delay queues): nothing waits in the app's outbox
    out = run_example("reminder.py", "--url", amqp_url("mailer"), *(["--spool"] if spool else []))
    check_reminder(out, held=0)
    if spool:
        check_spool(out, held=0)


def test_reminder_on_xmpp(xmpp_url: XmppUrl) -> None:
    check_reminder(run_example("reminder.py", "--url", xmpp_url("mailer")), held=3)
