"""Progress events, the one reading of ``progress=`` and the adapters (text lines, the CLI's
plain-line mode). Every long job's events: tests/test_progress_of_long_jobs.py."""

from __future__ import annotations

import io

import pytest

from convlens import progress as progress_module
from convlens.cli._progress import cli_progress
from convlens.errors import ConvlensError, ProgressError
from convlens.progress import (
    ProgressEvent,
    emit,
    notebook_progress,
    resolve_progress,
    text_progress,
)


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


def test_resolve_progress_reads_every_accepted_value(monkeypatch, capsys) -> None:
    assert resolve_progress(None) is None and resolve_progress(False) is None
    got: list[ProgressEvent] = []
    assert resolve_progress(got.append) == got.append
    monkeypatch.setattr(progress_module, "in_notebook", lambda: False)
    resolve_progress(True)(ProgressEvent("audit", 1, 4, "batch 1"))
    assert capsys.readouterr().err == "audit: 1/4 batch 1\n"
    monkeypatch.setattr(progress_module, "in_notebook", lambda: True)
    monkeypatch.setattr(progress_module, "notebook_progress", lambda: got.append)
    assert resolve_progress(True) == got.append


@pytest.mark.parametrize("bad", ["yes", 1, 0.5, [print]])
def test_resolve_progress_refuses_anything_else_in_one_line(bad) -> None:
    with pytest.raises(ProgressError, match="^progress must be None or False") as caught:
        resolve_progress(bad)
    assert isinstance(caught.value, ConvlensError) and "\n" not in str(caught.value)
