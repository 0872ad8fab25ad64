"""Progress events drawn for the command line: a Rich bar on a terminal, plain lines otherwise.

The library only emits :class:`~convlens.progress.ProgressEvent`; this is the one place
that draws them. On a terminal each stage gets a bar with ``done/total``; when stdout is not
a terminal (a pipe, a log file, CI) events become plain lines, a few per stage (its start,
each tenth of the way, its end), so a 600-image audit's log stays readable.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from convlens.progress import ProgressCallback, ProgressEvent, text_progress


@contextmanager
def cli_progress(*, terminal: bool | None = None) -> Iterator[ProgressCallback]:
    """Yield a callback that draws events; bars are removed when the block ends.

    Args:
        terminal: Force the bar (True) or the plain lines (False); default: whether
            stdout is a terminal.
    """
    if terminal is None:
        terminal = sys.stdout.isatty()
    if not terminal:  # a log: a stage's start, every tenth of the way, its end
        yield text_progress(sys.stdout, every=0.1)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[message]}"),
                  transient=True) as bar:

        def callback(event: ProgressEvent) -> None:
            task = tasks.get(event.stage)
            if task is None:
                task = tasks[event.stage] = bar.add_task(event.stage, total=event.total,
                                                         message="")
            bar.update(task, completed=event.done, total=event.total, message=event.message)

        yield callback
