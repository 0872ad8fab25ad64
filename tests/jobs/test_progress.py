"""Progress events and their adapters (text lines, the CLI's plain-line mode)."""

from __future__ import annotations

import io

from convlens.cli._progress import cli_progress
from convlens.progress import ProgressEvent, emit, notebook_progress, text_progress


def test_event_fraction_and_emit() -> None:
    assert ProgressEvent("explain", 3, 12).fraction == 0.25
    assert ProgressEvent("scan", 3, None).fraction is None
    got: list[ProgressEvent] = []
    emit(got.append, "explain", 1, 2, "batch 1")
    emit(None, "explain", 2, 2)  # no callback: nothing happens
    assert got == [ProgressEvent("explain", 1, 2, "batch 1")]


def test_text_progress_writes_one_plain_line_per_event() -> None:
    stream = io.StringIO()
    callback = text_progress(stream)
    callback(ProgressEvent("explain", 8, 64, "8 explained"))
    callback(ProgressEvent("scan", 5, None))
    assert stream.getvalue() == "explain: 8/64 8 explained\nscan: 5/?\n"


def test_cli_progress_without_a_terminal_prints_lines(capsys) -> None:
    with cli_progress(terminal=False) as callback:
        callback(ProgressEvent("explain", 1, 2))
    assert capsys.readouterr().out == "explain: 1/2\n"


def test_cli_progress_on_a_terminal_draws_a_bar_and_accepts_events() -> None:
    with cli_progress(terminal=True) as callback:
        callback(ProgressEvent("explain", 0, 2))
        callback(ProgressEvent("explain", 2, 2, "done"))


def test_notebook_progress_is_callable() -> None:
    callback = notebook_progress()
    callback(ProgressEvent("explain", 1, 1))
