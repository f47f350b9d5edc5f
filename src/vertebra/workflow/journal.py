"""The workflow journal: a SQLite file that lets an orchestrated workflow outlive the
process that started it.

One row per workflow (its id, its definition and input as JSON — see
:mod:`vertebra.workflow.definition` —, its status, its owner, its result or error, the
URLs of the bus it ran on with passwords and secret keys left out) and one row per
finished step (its path and its result as JSON). The file is in WAL mode with
``synchronous=FULL``: a step's row is committed and fsync'd before the next step starts.
Every connection to the file is used from the journal's own thread, never from the
event loop's.

Statuses: ``running`` (started, not ended: a new process can resume it), ``compensating``
(a step failed; undoing the finished ones), ``finished`` (``result`` is kept), ``failed``
(``error`` is kept). A workflow is owned by one process at a time (``host:pid``): claiming
a workflow whose owner is alive on this host raises :class:`WorkflowBusy` unless forced.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..wire.errors import VertebraError

if TYPE_CHECKING:
    import sqlite3

__all__ = ["DEFAULT_JOURNAL", "Journal", "JournalArg", "JournalEntry", "WorkflowBusy", "default_journal"]

DEFAULT_JOURNAL = "vertebra-workflows.db"
"""The journal's file name when none is given: in the current directory."""

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    input TEXT,
    urls TEXT NOT NULL,
    urls_complete INTEGER NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    owner TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    seq INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    result TEXT,
    finished REAL NOT NULL,
    UNIQUE (workflow, path, kind)
);
"""

T = TypeVar("T")


def default_journal() -> str:
    """``$VERTEBRA_JOURNAL`` if set, else :data:`DEFAULT_JOURNAL`."""
    return os.environ.get("VERTEBRA_JOURNAL") or DEFAULT_JOURNAL


class WorkflowBusy(VertebraError):
    """Another live process (or this one) is running the workflow already."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One workflow in the journal, as listed by :meth:`Journal.entries`.

    ``status`` is running, compensating, finished or failed; ``definition`` and ``input``
    are JSON text (``input`` is None when the workflow was started with no input);
    ``result`` and ``error`` are JSON text once it ended; ``urls`` are the bus's URLs
    without passwords or secret keys, and ``urls_complete`` says whether nothing had to be
    left out (then they are enough to reconnect); ``owner`` is ``host:pid`` of the process
    running it ("" when none); ``steps_done`` counts the finished steps.
    """

    id: str
    status: str
    definition: str
    input: str | None
    result: str | None
    error: str | None
    urls: tuple[str, ...]
    urls_complete: bool
    owner: str
    created: float
    updated: float
    steps_done: int


@dataclass(slots=True)
class Record:
    """What the runner needs to resume a workflow: its entry and its finished steps."""

    entry: JournalEntry
    done: list[tuple[str, str]] = field(default_factory=list)   # (path, result JSON), in order
    compensated: set[str] = field(default_factory=set)          # paths already undone


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


_active: set[tuple[str, str]] = set()       # (file, workflow id) that this process runs now
_active_lock = threading.Lock()


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process ``host:pid`` lives: None when it runs on another host (or the
    owner cannot be read), so that nobody can tell from here."""
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie (killed, not yet reaped) is dead for this purpose
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def redact_url(url: str) -> tuple[str, bool]:
    """``url`` without its password and secret-key parameters; and whether nothing was cut."""
    parts = urlsplit(url)
    netloc, whole = parts.netloc, True
    if "@" in netloc:
        userinfo, hostport = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc, whole = f"{userinfo.split(':', 1)[0]}@{hostport}", False
    query, pairs = parts.query, parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if "secret" not in k.lower() and "password" not in k.lower()]
    if len(kept) != len(pairs):
        query, whole = urlencode(kept), False
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)), whole


class Journal:
    """A workflow journal in the SQLite file ``path`` (default: ``$VERTEBRA_JOURNAL``, else
    ``vertebra-workflows.db`` in the current directory), created when missing.

    Pass it (or its path) to ``flow.run(bus, value, journal=..., workflow_id=...)``; read it
    with :meth:`entries` and :meth:`entry`; drop an ended workflow with :meth:`forget`.
    Usable from any thread; :meth:`close` it (or use it as a context manager) when done.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path if path is not None else default_journal())
        self._key = str(self.path.resolve())
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vertebra-journal")
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._rows: list[tuple[tuple[Any, ...], asyncio.Future[None], asyncio.AbstractEventLoop]] = []
        self._rows_lock = threading.Lock()
        self._flushing = False

    def __repr__(self) -> str:
        return f"<Journal {self.path}>"

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Finish the writes already asked for and close the file."""
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        self._pool.submit(shut)
        self._pool.shutdown(wait=True)

    # -- in the journal's thread ------------------------------------------------------------

    def _do(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError(f"journal {self.path} is closed")
        return self._pool.submit(fn, *args).result()

    async def _ado(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError(f"journal {self.path} is closed")
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def _open(self) -> sqlite3.Connection:
        import sqlite3  # here, not at the top: importing vertebra does not carry it
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"journal {self.path} has schema {version}; this vertebra "
                                   f"knows up to {SCHEMA_VERSION}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")     # fsync the WAL on every commit
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:                  # opened on first use, in the journal's thread
            self._db = self._open()
        return self._db

    def _write(self, sql: str, *params: Any) -> int:
        cur = self._conn.execute(sql, params)
        return cur.rowcount

    def _entry(self, row: tuple[Any, ...]) -> JournalEntry:
        (wid, status, definition, input_, result, error, urls, complete, owner, created,
         updated, done) = row
        return JournalEntry(wid, status, definition, input_, result, error, tuple(json.loads(urls)),
                            bool(complete), owner, created, updated, done)

    _SELECT = ("SELECT id, status, definition, input, result, error, urls, urls_complete, owner, "
               "created, updated, (SELECT count(*) FROM steps s WHERE s.workflow = w.id AND "
               "s.kind = 'done') FROM workflows w")

    def _get(self, workflow_id: str) -> JournalEntry | None:
        row = self._conn.execute(self._SELECT + " WHERE id = ?", (workflow_id,)).fetchone()
        return self._entry(row) if row else None

    def _record(self, workflow_id: str) -> Record | None:
        entry = self._get(workflow_id)
        if entry is None:
            return None
        rec = Record(entry)
        for path, kind, result in self._conn.execute(
                "SELECT path, kind, result FROM steps WHERE workflow = ? ORDER BY seq", (workflow_id,)):
            if kind == "done":
                rec.done.append((path, result))
            else:
                rec.compensated.add(path)
        return rec

    def _claim(self, workflow_id: str, definition: str, input_: str | None, urls: tuple[str, ...],
               force: bool) -> Record:
        db = self._conn
        with _active_lock:
            if (self._key, workflow_id) in _active:
                raise WorkflowBusy(f"workflow {workflow_id!r} is running in this process already")
            db.execute("BEGIN IMMEDIATE")
            try:
                rec = self._record(workflow_id)
                now = time.time()
                if rec is None:
                    cut = [redact_url(u) for u in urls]
                    db.execute("INSERT INTO workflows VALUES (?, ?, ?, ?, ?, 'running', NULL, NULL, ?, ?, ?)",
                               (workflow_id, definition, input_, json.dumps([u for u, _ in cut]),
                                int(all(w for _, w in cut)), _me(), now, now))
                    rec = self._record(workflow_id)
                    assert rec is not None
                else:
                    e = rec.entry
                    if e.definition != definition or e.input != input_:
                        what = "definition" if e.definition != definition else "input"
                        raise ValueError(f"workflow {workflow_id!r} is in {self.path} with another "
                                         f"{what}: resume it, or give this one a new id")
                    if e.status in ("running", "compensating"):
                        alive = owner_alive(e.owner) if e.owner and e.owner != _me() else False
                        if alive is not False and not force:
                            why = "is alive" if alive else "is on another host (cannot tell if it lives)"
                            raise WorkflowBusy(f"workflow {workflow_id!r} is owned by {e.owner}, which "
                                               f"{why}; force to take it over")
                        db.execute("UPDATE workflows SET owner = ?, updated = ? WHERE id = ?",
                                   (_me(), now, workflow_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if rec.entry.status in ("running", "compensating"):
                _active.add((self._key, workflow_id))
        return rec

    def _release(self, workflow_id: str) -> None:
        with _active_lock:
            _active.discard((self._key, workflow_id))
        self._write("UPDATE workflows SET owner = '' WHERE id = ? AND owner = ?", workflow_id, _me())

    def _flush_steps(self) -> None:
        """Commit every step row asked for so far in one transaction (group commit: the
        branches of a fan-out that finish together share one fsync), then wake their
        waiters; again while more arrived meanwhile."""
        while True:
            with self._rows_lock:
                batch, self._rows = self._rows, []
                if not batch:
                    self._flushing = False
                    return
            error: BaseException | None = None
            try:
                db = self._conn
                db.execute("BEGIN IMMEDIATE")
                try:
                    for row, _, _ in batch:
                        db.execute("INSERT OR IGNORE INTO steps (workflow, path, kind, name, result, "
                                   "finished) VALUES (?, ?, ?, ?, ?, ?)", row)
                        db.execute("UPDATE workflows SET updated = ? WHERE id = ?", (row[-1], row[0]))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except Exception as exc:
                error = exc
            for _, fut, loop in batch:
                loop.call_soon_threadsafe(_settle, fut, error)

    async def _step(self, workflow_id: str, path: str, kind: str, name: str, result: str | None) -> None:
        if self._closed:
            raise RuntimeError(f"journal {self.path} is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._rows_lock:
            self._rows.append(((workflow_id, path, kind, name, result, time.time()), fut, loop))
            start, self._flushing = not self._flushing, True
        if start:
            self._pool.submit(self._flush_steps)
        await fut

    def _status(self, workflow_id: str, status: str, result: str | None, error: str | None) -> None:
        self._write("UPDATE workflows SET status = ?, result = ?, error = ?, updated = ? WHERE id = ?",
                    status, result, error, time.time(), workflow_id)

    def _forget(self, workflow_id: str) -> bool:
        return self._write("DELETE FROM workflows WHERE id = ?", workflow_id) > 0

    # -- public, blocking -------------------------------------------------------------------

    def entries(self) -> list[JournalEntry]:
        """Every workflow in the journal, oldest first."""
        return self._do(lambda: [self._entry(r) for r in
                                 self._conn.execute(self._SELECT + " ORDER BY created, id")])

    def entry(self, workflow_id: str) -> JournalEntry | None:
        """The workflow ``workflow_id``, or None when the journal has none by that id."""
        return self._do(self._get, workflow_id)

    def forget(self, workflow_id: str) -> bool:
        """Remove a workflow and its steps; whether there was one. Forgetting a running
        workflow makes the process running it fail at its next step."""
        return self._do(self._forget, workflow_id)

    # -- for the runner ---------------------------------------------------------------------

    async def claim(self, workflow_id: str, definition: str, input_: str | None,
                    urls: tuple[str, ...], force: bool = False) -> Record:
        """Create the workflow, or take over an unfinished one (owner dead, or ``force``);
        its record. ValueError when the id is taken by another definition or input."""
        return await self._ado(self._claim, workflow_id, definition, input_, urls, force)

    async def load(self, workflow_id: str) -> Record | None:
        """The workflow's record, None when the journal has no such id."""
        return await self._ado(self._record, workflow_id)

    async def step_done(self, workflow_id: str, path: str, name: str, result: str) -> None:
        """Keep a finished step's result (committed and fsync'd when this returns)."""
        await self._step(workflow_id, path, "done", name, result)

    async def step_compensated(self, workflow_id: str, path: str, name: str) -> None:
        """Keep that the step at ``path`` was undone."""
        await self._step(workflow_id, path, "compensated", name, None)

    async def set_status(self, workflow_id: str, status: str, result: str | None = None,
                         error: str | None = None) -> None:
        """Move the workflow to ``status`` (with its result or error)."""
        await self._ado(self._status, workflow_id, status, result, error)

    def release(self, workflow_id: str) -> None:
        """This process no longer runs the workflow (queued: safe from a cancelled task)."""
        if not self._closed:
            self._pool.submit(self._release, workflow_id)


JournalArg: TypeAlias = "Journal | str | os.PathLike[str] | None"
"""A journal, or the path of its file (None: ``$VERTEBRA_JOURNAL``, else vertebra-workflows.db)."""
