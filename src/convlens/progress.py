"""Progress events: the library reports, front ends draw.

Every long job (``explain``, :class:`~convlens.jobs.explain_job.ExplainJob`, the audit
and its report, ``evaluate``, ``visualize``, the demo, ``correct``, ``reference_sets``, the
concept atlas, ``tcav``) takes ``progress: ProgressCallback | bool | None``, turns it into a
callback with :func:`resolve_progress`, and calls it with a :class:`ProgressEvent` after
each unit of work; jobs never print or draw. The command line turns events into a Rich bar
(``convlens.cli._progress``); notebooks get :func:`notebook_progress`; scripts
:func:`text_progress`. See docs/architecture.md, "Layers and the direction data flows":
jobs sit left of present/cli.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from convlens.errors import ProgressError

__all__ = ["ProgressCallback", "ProgressEvent", "ProgressLike", "emit", "notebook_progress",
           "resolve_progress", "text_progress"]


@dataclass(frozen=True)
class ProgressEvent:
    """How far one stage of a job has come.

    Attributes:
        stage: What is being done, e.g. ``"explain"``, ``"render"``, ``"scan"``. A job
            announces each stage with ``done=0`` before its first unit of work.
        done: Units finished so far in this stage (images, for the jobs in this package).
        total: Units the stage will process, or ``None`` when unknown (a folder still
            being walked).
        message: One short human line (e.g. the batch just finished), may be empty.
    """

    stage: str
    done: int
    total: int | None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        """``done / total`` in [0, 1], or ``None`` when the total is unknown or zero."""
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


ProgressCallback = Callable[[ProgressEvent], None]
"""What a job calls with each event; its return value is ignored."""

ProgressLike = ProgressCallback | bool | None
"""What a long job's ``progress`` argument accepts (see :func:`resolve_progress`)."""


def resolve_progress(progress: ProgressLike) -> ProgressCallback | None:
    """The one reading of a long job's ``progress`` argument.

    ``None`` or ``False``: silence (returns ``None``, which :func:`emit` skips). ``True``:
    bars in a Jupyter kernel (:func:`notebook_progress`), plain lines on stderr elsewhere
    (:func:`text_progress`). A callable: used as is, called with each
    :class:`ProgressEvent`.

    Example:
        >>> got = []
        >>> emit(resolve_progress(got.append), "explain", 0, 2)
        >>> got
        [ProgressEvent(stage='explain', done=0, total=2, message='')]
        >>> resolve_progress(False) is None
        True

    Raises:
        ProgressError: Anything else (a string, a number...).
    """
    if progress is None or progress is False:
        return None
    if progress is True:
        return notebook_progress() if in_notebook() else text_progress()
    if callable(progress):
        return progress
    raise ProgressError(f"progress must be None or False (silent), True (text lines, or bars "
                        f"in a notebook) or a callable taking a ProgressEvent, got "
                        f"{type(progress).__name__} {progress!r}; pass one of those")


def emit(callback: ProgressCallback | None, stage: str, done: int, total: int | None,
         message: str = "") -> None:
    """Call ``callback`` with a new event, if there is a callback."""
    if callback is not None:
        callback(ProgressEvent(stage, done, total, message))


def text_progress(stream: TextIO | None = None, *, every: float | None = None
                  ) -> ProgressCallback:
    """A callback printing one plain line per event: ``stage: done/total message``.

    Suits logs and pipes (no control characters). ``stream`` defaults to stderr.

    Args:
        stream: Where to print.
        every: Print only a stage's first event, its last (``done == total``) and the
            first event past each further ``every`` of the total (0.1: about 12 lines a
            stage, whatever the number of units). Events of a stage without a known
            total print the first one only, then one per ``1 / every`` events.
            ``None`` prints every event.
    """
    printed: dict[str, float] = {}
    counts: dict[str, int] = {}

    def wanted(event: ProgressEvent) -> bool:
        if every is None:
            return True
        first = event.stage not in printed
        counts[event.stage] = counts.get(event.stage, 0) + 1
        fraction = event.fraction
        if fraction is None:
            step = max(1, round(1 / every))
            due = first or counts[event.stage] % step == 0
            if due:
                printed[event.stage] = 0.0
            return due
        if first or fraction >= 1.0 or fraction >= printed[event.stage] + every:
            printed[event.stage] = fraction
            return True
        return False

    def callback(event: ProgressEvent) -> None:
        if not wanted(event):
            return
        out = stream if stream is not None else sys.stderr
        total = "?" if event.total is None else str(event.total)
        tail = f" {event.message}" if event.message else ""
        print(f"{event.stage}: {event.done}/{total}{tail}", file=out, flush=True)

    return callback


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (where :func:`notebook_progress` draws bars).

    Only a kernel counts: a terminal IPython session has ``get_ipython()`` too, but no
    ``IPKernelApp`` in its config, and gets plain text like a script. IPython is looked up
    in ``sys.modules``, never imported, so a script pays nothing for the check.
    """
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except AttributeError:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def notebook_progress() -> ProgressCallback:
    """A callback for notebooks: one ``tqdm.auto`` bar per stage when tqdm is installed.

    Falls back to :func:`text_progress` on stdout when tqdm is not importable.
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return text_progress(sys.stdout)
    bars: dict[str, Any] = {}

    def callback(event: ProgressEvent) -> None:
        bar = bars.get(event.stage)
        if bar is None:
            bar = bars[event.stage] = tqdm(total=event.total, desc=event.stage)
        if event.total is not None and bar.total != event.total:
            bar.total = event.total
        bar.n = event.done
        if event.message:
            bar.set_postfix_str(event.message, refresh=False)
        bar.refresh()
        if event.total is not None and event.done >= event.total:
            bar.close()

    return callback
