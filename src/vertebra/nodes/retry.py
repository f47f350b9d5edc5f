"""The one retry policy for tasks, the same on every transport.

A ``@task`` handler that raises is tried again up to its ``max_attempts`` (the
decorator's, else the Node's ``max_attempts``, default 3), waiting an exponential backoff
with full jitter between attempts; then it is buried as a dead letter that keeps the
error.  The node does this itself, so that every transport behaves alike:

* another attempt: the task is re-sent to its service's queue with the ``attempt``
  header raised (same message id, so ``vertebra.current().id`` stays the same), and only
  then is the failed delivery acknowledged — a node that dies in between leaves the
  original unacknowledged, for the transport to deliver again (at-least-once);
* permanent failures are not retried: arguments that do not fit the signature or its
  annotated types, a ``TypeError`` the handler raises, and a method the service does not
  have;
* the backoff wait holds the failed delivery (one of the replica's ``concurrency``
  slots), so a crash during the wait loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backoff import Backoff
from ..wire.deadletter import attempt_of
from ..wire.envelope import Envelope

__all__ = ["DEFAULT_MAX_ATTEMPTS", "RetryPolicy"]

DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failing task runs, and how long to wait between its attempts."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: Backoff = Backoff(base=0.1, cap=5.0)

    def next_attempt(self, env: Envelope) -> int | None:
        """The attempt number to try next after ``env`` failed, or None: bury it."""
        attempt = attempt_of(env)
        return attempt + 1 if attempt < self.max_attempts else None

    def delay(self, env: Envelope) -> float:
        """Seconds to wait before re-sending ``env``'s next attempt."""
        return self.backoff.delay(attempt_of(env) - 1)
