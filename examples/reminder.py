"""Delayed tasks: a web app schedules reminder mails that a mail node sends when due.

    python examples/reminder.py                  # both, on an embedded ZeroMQ hub
    python examples/reminder.py --spool          # the app restarts before the reminders are due
    python examples/reminder.py mail --url URL   # the mail node alone
    python examples/reminder.py web --url URL    # the web app's requests alone

The app's /signup handler casts ``mailer.send_reminder`` with ``.options(delay=...)`` and
answers at once: the request never waits for the delay.  The task is held until due —
by RabbitMQ's delay queues on amqp://, elsewhere by the app's own outbox (and its spool,
``--spool``, so that a restart of the app does not lose it) — and the mail node, which
checks the due time it is given, never runs it early.  /unsubscribe revokes a reminder
not yet sent with ``bus.cancel(service, message_id)``: it is never sent.

URL is e.g. zmq://127.0.0.1:7000 (start a hub with `vertebra hub`) or
amqp://guest:guest@127.0.0.1:5672/%2F.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from wsgiref.util import setup_testing_defaults

import vertebra
from vertebra import Node, task

# (who, seconds from now) for each signup; bob unsubscribes before his reminder is due
SIGNUPS = [("ada@example.com", 1.0), ("bob@example.com", 1.5), ("cy@example.com", 2.0)]
UNSUBSCRIBE = "bob@example.com"


class Mailer(Node):
    """Sends mail (here: prints it and keeps a record)."""

    name = "mailer"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: list[dict[str, Any]] = []

    @task
    def send_reminder(self, to: str, text: str, due: float) -> None:
        """Send ``text`` to ``to``; ``due`` is when the app asked for it (epoch seconds)."""
        ran = time.time()
        ctx = vertebra.current()
        record = {"to": to, "ran": ran, "due": due, "id": ctx.id, "attempt": ctx.attempt}
        with self.lock:
            self.sent.append(record)
        late = ran - due
        print(f"mailer: to {to}: {text!r} ({'EARLY' if late < 0 else 'late'} by "
              f"{abs(late) * 1000:.0f} ms, message {ctx.id}, attempt {ctx.attempt})", flush=True)

    def records(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.sent)


def make_app(bus: vertebra.Bus) -> Callable[..., Iterable[bytes]]:
    """The web app (plain WSGI): /signup?email=E&delay=S and /unsubscribe?email=E."""
    mailer = bus.proxy("mailer")
    scheduled: dict[str, str] = {}           # email -> id of its pending reminder

    def signup(email: str, delay: float) -> str:
        due = time.time() + delay
        reminder = mailer.send_reminder.options(delay=delay)
        message_id = reminder.cast(email, "Finish setting up your account!", due)
        if message_id is None:
            raise RuntimeError("the outbox dropped the reminder")
        scheduled[email] = message_id
        return f"welcome {email}: reminder {message_id} due in {delay:.1f} s"

    def unsubscribe(email: str) -> str:
        message_id = scheduled.pop(email, None)
        if message_id is None:
            return f"{email}: nothing scheduled"
        bus.cancel("mailer", message_id)     # revoked on the mail node: never sent
        return f"{email}: reminder {message_id} cancelled"

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        email = query.get("email", [""])[0]
        path = environ.get("PATH_INFO", "/")
        if path == "/signup":
            body, status = signup(email, float(query.get("delay", ["60"])[0])), "202 Accepted"
        elif path == "/unsubscribe":
            body, status = unsubscribe(email), "200 OK"
        else:
            body, status = "not found", "404 Not Found"
        start_response(status, [("Content-Type", "text/plain")])
        return [body.encode()]

    return app


def request(app: Callable[..., Iterable[bytes]], path: str, query: str) -> None:
    """One request to the app, in-process, as a WSGI server would make it; print it."""
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query}
    setup_testing_defaults(environ)
    status: list[str] = []
    start = time.perf_counter()
    body = b"".join(app(environ, lambda s, headers: status.append(s)))
    took = (time.perf_counter() - start) * 1000
    print(f"POST {path}?{query} -> {status[0]} in {took:.1f} ms: {body.decode()}", flush=True)


def web(url: str, spool: Path | None) -> None:
    """The app's requests: three signups, one unsubscribe; then it runs until its outbox
    has handed every reminder over.  With ``spool`` the app stops first, before any
    reminder is due, and a new one on the same spool takes over, as after a deploy."""
    with vertebra.connect(url, spool=str(spool) if spool else None) as bus:
        app = make_app(bus)
        for email, delay in SIGNUPS:
            request(app, "/signup", f"email={email}&delay={delay}")
        request(app, "/unsubscribe", f"email={UNSUBSCRIBE}")
        held = bus.stats()["outbox"]["delayed"]
        print(f"held by {'the outbox' if held else 'the broker'}: {held} delayed in the outbox",
              flush=True)
        if spool is None:
            wait_handed_over(bus)
            return
    keeper = f"its spool {spool.name} keeps {held}" if held else "the broker keeps them"
    print(f"web app stopped before the reminders were due; {keeper}", flush=True)
    with vertebra.connect(url, spool=str(spool)) as bus:
        restored = bus.stats()["outbox"].get("restored", 0)
        print(f"web app restarted: {restored} restored from the spool", flush=True)
        wait_handed_over(bus)


def wait_handed_over(bus: vertebra.Bus, timeout: float = 30.0) -> None:
    """Keep the app running until its outbox is empty: every reminder it held, once due,
    was handed to the transport."""
    deadline = time.monotonic() + timeout
    while bus.stats()["outbox"]["queued"] and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_mailed(bus: vertebra.Bus, mailer: Mailer, count: int, timeout: float = 30.0) -> int:
    """Wait until ``mailer`` has sent ``count`` reminders and revoked one; how many it revoked."""
    stats = bus.proxy("mailer")["_vertebra_stats"]
    deadline = time.monotonic() + timeout
    while True:
        revoked = int(stats()["counts"].get("cancelled", 0))
        if (len(mailer.records()) >= count and revoked) or time.monotonic() > deadline:
            return revoked
        time.sleep(0.1)


def both(url: str, spool: Path | None) -> None:
    mailer = Mailer()
    with vertebra.connect(url) as mail_bus:
        mail_bus.serve(mailer)
        start = time.time()
        web(url, spool)
        revoked = wait_mailed(mail_bus, mailer, len(SIGNUPS) - 1)
        sent = sorted(mailer.records(), key=lambda r: r["ran"])
        early = [r for r in sent if r["ran"] < r["due"]]
        print(f"sent {len(sent)} reminders in {time.time() - start:.1f} s: "
              f"{', '.join(r['to'] for r in sent)}")
        print(f"run early: {len(early)}")
        print(f"{UNSUBSCRIBE} sent: {any(r['to'] == UNSUBSCRIBE for r in sent)}, "
              f"revoked on the node: {revoked}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["both", "mail", "web"], default="both")
    parser.add_argument("--url", help="transport URL (default: an embedded ZeroMQ hub)")
    parser.add_argument("--spool", action="store_true",
                        help="give the app a durable outbox and restart it before the reminders are due")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp) / "outbox.db" if args.spool else None
        if args.mode == "mail":
            vertebra.serve(Mailer(), url=args.url)        # blocks; Ctrl-C drains and stops
        elif args.mode == "web":
            web(args.url, spool)
        elif args.url:
            both(args.url, spool)
        else:
            with vertebra.Hub("tcp://127.0.0.1:0") as hub:
                both(hub.url, spool)


if __name__ == "__main__":
    main()
