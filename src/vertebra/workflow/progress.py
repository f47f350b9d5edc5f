"""Progress of workflows on a terminal: a live line with rich when it is installed and the
output is a terminal, else one plain line per step on stderr."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

from .runner import Progress, ProgressCallback

__all__ = ["terminal_reporter"]


@contextlib.contextmanager
def terminal_reporter() -> Iterator[ProgressCallback]:
    """A progress callback that draws on the terminal while the block runs."""
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn
        from rich.progress import Progress as Bar
    except ImportError:
        yield _plain
        return
    if not sys.stderr.isatty():
        yield _plain
        return
    lock = threading.Lock()
    with Bar(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
             transient=False) as bar:
        task = bar.add_task("workflow", total=0)
        counts = {"started": 0, "done": 0}

        def report(p: Progress) -> None:
            with lock:
                if p.event in counts:
                    counts[p.event] += 1
                what = "finished" if p.event == "finished" else f"{p.event} {p.step}"
                bar.update(task, total=counts["started"], completed=counts["done"], description=what)

        yield report


def _plain(p: Progress) -> None:
    where = f" {p.step}" if p.step else ""
    detail = f": {p.detail}" if p.event in ("failed", "finished") and p.detail is not None else ""
    print(f"[workflow] {p.event}{where}{detail}", file=sys.stderr, flush=True)
