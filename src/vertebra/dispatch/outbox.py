"""The outbox: a bounded queue between callers and the transport, for casts, tasks and events.

``put`` never touches the network and, by default, never blocks: when the outbox is full
the configured policy decides (``drop_oldest``, ``drop_newest`` or ``block`` with a
timeout) and every drop is counted.  A sender task on the Bus's event loop drains it,
keeping up to ``window`` sends in flight, and retries sends that fail for transport
reasons (``ConnectionError``/``OSError``) with exponential backoff, jitter and a cap; a
message older than ``max_age`` (or past its deadline) is given up and counted.

``put`` is safe from any thread; everything else runs on the Bus's loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from ..wire.envelope import Envelope
from ..wire.errors import ProtocolError
from .logfields import fields
from .spool import Spool

__all__ = ["Backoff", "Outbox", "OverflowPolicy"]

log = logging.getLogger("vertebra.outbox")

# Time is injectable (``clock``, ``sleep``, ``Backoff.jitter``) so that retries, backoff and
# expiry are tested without sleeping.

OverflowPolicy = Literal["drop_oldest", "drop_newest", "block"]

DROP_LOG_INTERVAL = 10.0
"""Seconds between the log lines about drops (every drop is counted, not every one logged)."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base·2ⁿ))."""

    base: float = 0.05
    cap: float = 5.0
    jitter: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (0-based)."""
        return float(self.jitter() * min(self.cap, self.base * (2 ** min(attempt, 30))))


class Outbox:
    """Bounded, thread-safe queue of envelopes waiting to be sent."""

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
        self._logged_at = -DROP_LOG_INTERVAL
        self._unlogged = 0
        self.counts = {"accepted": 0, "sent": 0, "dropped": 0, "expired": 0, "retries": 0,
                       "failed": 0}

    # -- any thread ---------------------------------------------------------------------

    def put(self, env: Envelope) -> bool:
        """Queue ``env``; False if the overflow policy dropped it (or block timed out)."""
        now = self.clock()
        with self._cond:
            if len(self._items) >= self.maxsize:
                if self.policy == "drop_newest" or (
                        self.policy == "block" and not self._wait_for_room()):
                    self._dropped(env, "newest", now)
                    return False
                if self.policy == "drop_oldest" and len(self._items) >= self.maxsize:
                    old, _, old_seq = self._items.popleft()
                    self._forget(old_seq)
                    self._dropped(old, "oldest", now)
            seq = self.spool.add(env) if self.spool is not None else 0
            self._items.append((env, now, seq))
            self.counts["accepted"] += 1
            wake = self._idle
            self._idle = False
        if wake:
            self._kick()
        return True

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
        while len(self._items) >= self.maxsize:
            left = deadline - time.monotonic()
            if left <= 0 or not self._cond.wait(left):
                return len(self._items) < self.maxsize
        return True

    def __len__(self) -> int:
        return len(self._items) + self._inflight

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
        while True:
            with self._cond:
                item = self._items.popleft() if self._items else None
                if item is None:
                    self._idle = True
                    self._wake.clear()
                else:
                    self._inflight += 1
                    self._cond.notify()
            if item is None:
                self._check_drained()
                await self._wake.wait()
                continue
            await self._slots.acquire()
            task = asyncio.create_task(self._deliver(*item))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def _forget(self, seq: int) -> None:
        if seq and self.spool is not None:
            self.spool.remove(seq)

    def restore(self) -> int:
        """Queue what the spool kept from an earlier process; how many were restored."""
        if self.spool is None:
            return 0
        now = self.clock()
        restored = self.spool.pending()
        with self._cond:
            self._items.extendleft((env, now, seq) for seq, env in reversed(restored))
            self.counts["restored"] = self.counts.get("restored", 0) + len(restored)
        if restored:
            log.info("restored %d unsent message(s) from %s", len(restored), self.spool.path)
            self._kick()
        return len(restored)

    async def _deliver(self, env: Envelope, accepted_at: float, seq: int) -> None:
        assert self._slots is not None
        attempt = 0
        try:
            while True:
                if self.clock() - accepted_at > self.max_age or env.expired():
                    self.counts["expired"] += 1
                    self._forget(seq)
                    log.warning("gave up %s %s after %d attempts: too old", env.kind, env.id, attempt,
                                extra=fields(env))
                    return
                try:
                    await self._send(env)
                except (ConnectionError, OSError) as exc:
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
            self._inflight -= 1
            self._slots.release()
            self._check_drained()

    def _check_drained(self) -> None:
        if self._drained is not None and not self._items and self._inflight == 0:
            self._drained.set()

    async def flush(self, timeout: float) -> int:
        """Wait until everything queued is sent, or ``timeout``; return how many are left."""
        if self._drained is None:
            return len(self)
        self._drained.clear()
        self._check_drained()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            pass
        return len(self)

    async def stop(self) -> None:
        """Stop the sender task and sends in flight (what is left stays counted in ``len``)."""
        for task in list(self._sending):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
