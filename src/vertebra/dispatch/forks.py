"""What must not cross a ``fork()``: message ids, and buses opened before it.

A pre-fork server (gunicorn ``--preload``, multiprocessing's fork start method) imports
vertebra once and forks workers.  Each child re-draws the message-id prefix (otherwise
every worker would mint the parent's ids, and a node's duplicate suppression would drop
the work of all but one), and forgets the buses its parent had open: their loop thread
and connections did not cross the fork.  Using such a bus in the child raises
:class:`RuntimeError` saying what to do, instead of hanging on a thread that is not there.
"""

from __future__ import annotations

import os

__all__ = ["check_not_forked", "generation"]

_generation = 0


def generation() -> int:
    """How many forks lie between the first process and this one (0 in the first)."""
    return _generation


def check_not_forked(opened_in: int, what: str = "this bus") -> None:
    """Raise if something made in generation ``opened_in`` is used after a fork."""
    if opened_in != _generation:
        raise RuntimeError(
            f"{what} was opened before os.fork() and cannot be used in the child "
            "process: its loop thread and connections stay with the parent. Open a new bus "
            "in the child, after the fork (gunicorn: in post_worker_init or at the first request; "
            "multiprocessing: in the target function).")


def _after_fork_in_child() -> None:
    global _generation
    _generation += 1        # the id prefix is re-drawn by vertebra.wire.envelope's own hook


os.register_at_fork(after_in_child=_after_fork_in_child)
