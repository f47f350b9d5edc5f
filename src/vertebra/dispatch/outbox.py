"""The outbox: a bounded queue between callers and the transport, for casts, tasks and events.

``put`` never touches the network and, by default, never blocks: when the outbox is full
the configured policy decides (``drop_oldest``, ``drop_newest`` or ``block`` with a
timeout) and every drop is counted.  A sender task on the Bus's event loop drains it,
keeping up to ``window`` sends in flight, and retries sends that fail for transport
reasons (``ConnectionError``/``OSError``) with exponential backoff, jitter and a cap; a
message older than ``max_age`` (or past its deadline) is given up and counted, also while
a send of it is still waiting (for a confirmation, say).  No destination (a service; all
events together) holds more than a quarter of the window: the messages of a service that
is slow or absent wait behind their own kind, never in front of another service's.

Delayed messages (``not_before``, epoch seconds, from ``delay``/``at``): where the transport
does not hold them itself (``hold_delayed=True``, for a transport whose
``capabilities.holds_delayed`` is False) a message whose ``not_before`` is still ahead is
*held* in a heap (earliest ``not_before`` first, then arrival) and joins the end of the
send queue only once due, woken by one loop timer set for the earliest; it is never handed
to the transport before its ``not_before``.  A held message:

- takes room like any other: ``maxsize`` and the overflow policy count it (``len``
  includes it).  ``drop_oldest`` drops the message at the head of the line, the next one
  to be sent: the oldest due message, or, when none is due, the held one due first;
- is in the spool from ``put`` on, like any other, so it survives ``kill -9`` and is held
  again (still not sent early) after :meth:`Outbox.restore`;
- has ``max_age`` counted from its due time, not from ``put``;
- is not waited for by :meth:`Outbox.flush` (which waits only for what is due);
  :attr:`Outbox.held` says how many are held, and :meth:`Outbox.stop` returns it (kept
  in the spool for the next start, or lost without one: the caller logs which).

With ``hold_delayed=False`` (the broker holds them) such messages go straight through.
The send queue is FIFO; priorities are the transport's business.

``put`` is safe from any thread; everything else runs on the Bus's loop.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from ..backoff import Backoff
from ..wire.envelope import Envelope
from ..wire.errors import ProtocolError
from .logfields import fields
from .spool import Spool

__all__ = ["Outbox", "OverflowPolicy"]

log = logging.getLogger("vertebra.outbox")

# Time is injectable (``clock``, ``sleep``, ``Backoff.jitter``) so that retries, backoff and
# expiry are tested without sleeping.  ``not_before`` and deadlines are wall-clock epoch
# seconds, read from ``time.time()``.

OverflowPolicy = Literal["drop_oldest", "drop_newest", "block"]

DROP_LOG_INTERVAL = 10.0
"""Seconds between the log lines about drops (every drop is counted, not every one logged)."""


class Outbox:
    """Bounded, thread-safe queue of envelopes waiting to be sent (and of delayed ones
    held until due, with ``hold_delayed``; see the module's docstring)."""

    def __init__(
        self,
        send: Callable[[Envelope], Awaitable[None]],
        *,
        maxsize: int = 10_000,
        policy: OverflowPolicy = "drop_oldest",
        block_timeout: float = 1.0,
        window: int = 64,
        max_age: float = 300.0,
        backoff: Backoff = Backoff(),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        spool: Spool | None = None,
        hold_delayed: bool = True,
    ) -> None:
        if policy not in ("drop_oldest", "drop_newest", "block"):
            raise ValueError(f"unknown overflow policy {policy!r}")
        self._send = send
        self.maxsize = maxsize
        self.policy: OverflowPolicy = policy
        self.block_timeout = block_timeout
        self.window = window
        self.max_age = max_age
        self.backoff = backoff
        self.clock = clock
        self.sleep = sleep
        self.spool = spool
        self.hold_delayed = hold_delayed
        # held until due: (not_before, arrival order, envelope, spool seq); the spool's seq
        # is the arrival order when there is a spool (restored ones come first), else a counter
        self._held: list[tuple[float, int, Envelope, int]] = []
        self._order = itertools.count(1)
        self._items: collections.deque[tuple[Envelope, float, int]] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._idle = True
        self._inflight = 0
        self._task: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._drained: asyncio.Event | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.per_destination = max(1, window // 4)
        self._stopping = False
        self._busy: dict[str, int] = {}
        self._parked: dict[str, collections.deque[tuple[Envelope, float, int]]] = {}
        self._logged_at = -DROP_LOG_INTERVAL
        self._unlogged = 0
        self.counts = {"accepted": 0, "sent": 0, "dropped": 0, "expired": 0, "retries": 0,
                       "failed": 0, "delayed": 0}

    # -- any thread ---------------------------------------------------------------------

    def put(self, env: Envelope) -> bool:
        """Queue ``env`` (or hold it until its ``not_before``); False if the overflow policy
        dropped it (or block timed out)."""
        now = self.clock()
        with self._cond:
            if len(self._items) + len(self._held) >= self.maxsize:
                if self.policy == "drop_newest" or (
                        self.policy == "block" and not self._wait_for_room()):
                    self._dropped(env, "newest", now)
                    return False
                if self.policy == "drop_oldest" and len(self._items) + len(self._held) >= self.maxsize:
                    self._drop_oldest(now)
            seq = self.spool.add(env) if self.spool is not None else 0
            not_before = env.not_before
            if not_before is not None and self.hold_delayed and not_before > time.time():
                order = seq if self.spool is not None else next(self._order)
                heapq.heappush(self._held, (not_before, order, env, seq))
                self.counts["delayed"] += 1
            else:
                self._items.append((env, now, seq))
            self.counts["accepted"] += 1
            wake = self._idle
            self._idle = False
        if wake:
            self._kick()
        return True

    def _drop_oldest(self, now: float) -> None:
        """Drop the head of the line: the oldest due message, else the held one due first."""
        if self._items:
            old, _, old_seq = self._items.popleft()
        elif self._held:
            _, _, old, old_seq = heapq.heappop(self._held)
        else:
            return
        self._forget(old_seq)
        self._dropped(old, "oldest", now)

    def _dropped(self, env: Envelope, which: str, now: float) -> None:
        """Count a drop; log the first of a burst, then one summary line per DROP_LOG_INTERVAL."""
        self.counts["dropped"] += 1
        self._unlogged += 1
        if now - self._logged_at >= DROP_LOG_INTERVAL:
            log.warning("outbox full (%d): dropped %d message(s) (%s first; latest %s %s); %d dropped in all",
                        self.maxsize, self._unlogged, which, env.kind,
                        env.topic or f"{env.service}.{env.method}", self.counts["dropped"], extra=fields(env))
            self._logged_at, self._unlogged = now, 0

    def _wait_for_room(self) -> bool:
        loop = self._loop
        if loop is not None and loop.is_running() and _on_loop_thread(loop):
            return False  # blocking the loop would block the sender too: treat as full
        deadline = time.monotonic() + self.block_timeout
        while len(self._items) + len(self._held) >= self.maxsize:
            left = deadline - time.monotonic()
            if left <= 0 or not self._cond.wait(left):
                return len(self._items) + len(self._held) < self.maxsize
        return True

    def __len__(self) -> int:
        return len(self._items) + self._inflight + len(self._held)

    @property
    def held(self) -> int:
        """How many delayed messages are held, waiting for their ``not_before``."""
        return len(self._held)

    def _release_due(self) -> None:
        """Move the held messages that are due to the end of the queue (lock held).

        Their ``max_age`` starts at the due time: the accepted-at stamp is the due time on
        the ``clock``."""
        held = self._held
        wall, now = time.time(), self.clock()
        while held and held[0][0] <= wall:
            not_before, _, env, seq = heapq.heappop(held)
            self._items.append((env, now - (wall - not_before), seq))

    def _kick(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        if _on_loop_thread(loop):
            wake.set()
        else:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # loop closed: the message stays queued, counted at close
                pass

    # -- the Bus's loop -----------------------------------------------------------------

    def start(self) -> None:
        """Start the sender task on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.window)
        self._drained = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="vertebra-outbox")
        self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        while True:
            due_in: float | None = None
            with self._cond:
                if self._held:
                    self._release_due()
                item = self._items.popleft() if self._items else None
                if item is None:
                    self._idle = True
                    self._wake.clear()
                    if self._held:
                        due_in = self._held[0][0] - time.time()
                else:
                    self._inflight += 1
                    self._cond.notify()
            if item is None:
                self._check_drained()
                # one timer, for the earliest held message; a put wakes us earlier
                timer = None if due_in is None else loop.call_later(max(0.0, due_in), self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    if timer is not None:
                        timer.cancel()
                continue
            dest = _destination(item[0])
            parked = self._parked.get(dest)
            if parked is not None or self._busy.get(dest, 0) >= self.per_destination:
                # this destination has its share of the window in flight: the message waits
                # behind its own destination's sends, never in front of anyone else's
                if parked is None:
                    parked = self._parked[dest] = collections.deque()
                parked.append(item)
                continue
            await self._slots.acquire()
            self._start(dest, item)

    def _start(self, dest: str, item: tuple[Envelope, float, int]) -> None:
        self._busy[dest] = self._busy.get(dest, 0) + 1
        task = asyncio.create_task(self._deliver(dest, *item))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _finished(self, dest: str) -> None:
        """A send to ``dest`` ended: its slot goes to the next parked message of ``dest``."""
        assert self._slots is not None
        self._inflight -= 1
        busy = self._busy[dest] - 1
        if busy:
            self._busy[dest] = busy
        else:
            del self._busy[dest]
        parked = self._parked.get(dest)
        if parked and not self._stopping:
            item = parked.popleft()
            if not parked:
                del self._parked[dest]
            self._start(dest, item)          # the slot passes on, still held
        else:
            self._slots.release()
        self._check_drained()

    def _forget(self, seq: int) -> None:
        if seq and self.spool is not None:
            self.spool.remove(seq)

    def restore(self) -> int:
        """Queue what the spool kept from an earlier process, ahead of anything new; a
        delayed message that is still not due is held again.  How many were restored."""
        if self.spool is None:
            return 0
        now = self.clock()
        restored = self.spool.pending()
        with self._cond:
            wall = time.time()
            due: list[tuple[Envelope, float, int]] = []
            held = 0
            for seq, env in restored:
                not_before = env.not_before
                if not_before is not None and self.hold_delayed and not_before > wall:
                    heapq.heappush(self._held, (not_before, seq, env, seq))
                    held += 1
                else:
                    due.append((env, now, seq))
            self._items.extendleft(reversed(due))
            self.counts["restored"] = self.counts.get("restored", 0) + len(restored)
        if restored:
            log.info("restored %d unsent message(s) from %s (%d held until due)", len(restored),
                     self.spool.path, held)
            self._kick()
        return len(restored)

    def _time_left(self, env: Envelope, accepted_at: float) -> float:
        """Seconds before ``env`` is too old to send (``max_age``, or its deadline)."""
        left = self.max_age - (self.clock() - accepted_at)
        if env.deadline is not None:
            left = min(left, env.deadline - time.time())
        return left

    async def _deliver(self, dest: str, env: Envelope, accepted_at: float, seq: int) -> None:
        attempt = 0
        try:
            while True:
                left = self._time_left(env, accepted_at)
                if left <= 0:
                    self._expire(env, seq, attempt)
                    return
                scope = asyncio.timeout(left)     # max_age holds while a send waits, too
                try:
                    async with scope:
                        await self._send(env)
                except (ConnectionError, OSError) as exc:
                    if scope.expired():
                        self._expire(env, seq, attempt + 1)
                        return
                    self.counts["retries"] += 1
                    delay = self.backoff.delay(attempt)
                    attempt += 1
                    log.info("send of %s failed (%s); retry %d in %.3fs", env.id, exc, attempt, delay,
                             extra=fields(env))
                    await self.sleep(delay)
                except ProtocolError as exc:
                    self.counts["failed"] += 1
                    self._forget(seq)
                    log.error("cannot send %s %s: %s", env.kind, env.id, exc, extra=fields(env))
                    return
                else:
                    self.counts["sent"] += 1
                    self._forget(seq)
                    return
        finally:
            self._finished(dest)

    def _expire(self, env: Envelope, seq: int, attempts: int) -> None:
        self.counts["expired"] += 1
        self._forget(seq)
        log.warning("gave up %s %s after %d attempt(s): older than max_age %.0fs or past its deadline",
                    env.kind, env.id, attempts, self.max_age, extra=fields(env))

    def _check_drained(self) -> None:
        if self._drained is not None and not self._items and self._inflight == 0 \
                and not self._held_due():
            self._drained.set()

    def _held_due(self) -> bool:
        """A held message is due but not yet moved to the queue (the sender will soon)."""
        if not self._held:
            return False
        with self._cond:
            return bool(self._held) and self._held[0][0] <= time.time()

    def _unsent_due(self) -> int:
        """How many are left that are due (queued or in flight): ``len`` less the held."""
        with self._cond:
            if self._held:
                self._release_due()
            return len(self._items) + self._inflight

    async def flush(self, timeout: float) -> int:
        """Wait until everything due is sent, or ``timeout``; return how many due ones are
        left.  Held messages not yet due are neither waited for nor counted (see
        :attr:`held`)."""
        if self._drained is None:
            return self._unsent_due()
        self._drained.clear()
        self._check_drained()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            pass
        return self._unsent_due()

    async def stop(self) -> int:
        """Stop the sender task and sends in flight (what is left stays counted in ``len``).

        Returns how many held messages (not yet due) were left: with a spool they stay in
        it for the next start; without one they are lost (the caller logs that)."""
        self._stopping = True
        tasks = list(self._sending)
        if self._task is not None:
            tasks.append(self._task)
            self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with self._cond:
            if self._held:
                self._release_due()   # due by now: count it with the queued ones, not as held
            return len(self._held)


def _destination(env: Envelope) -> str:
    """What fairness is kept between: each service, and all events together."""
    return "" if env.kind == "event" else env.service


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
