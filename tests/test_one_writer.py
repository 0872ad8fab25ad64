"""One writer (issue 19, item 3): every file an explain, audit and evaluate run leaves behind
came through ``convlens.files``' atomic writer.

The commands run in this process through the CLI's own entry point (``convlens.cli.app.main``,
what the ``convlens`` script calls), so that the wrapped primitive sees every write. The only
files not written by it are the ones ``convlens.files`` keeps otherwise, by design: the
manifest (appended to, line by line) and the lock file (locked in place, holding a PID).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_support import TINY, photo

from convlens import files
from convlens.cli.app import main

OTHER_MECHANISM = {files.MANIFEST, files.LOCK_FILE}
"""Written by ``OutputFolder.list_names`` and ``folder_lock``, not renamed into place."""


def _data(root: Path) -> Path:
    for index, label in enumerate(["ant", "bee"]):
        (root / label).mkdir(parents=True)
        for k in range(2):
            photo(root / label / f"{label}{k}.png", size=(40 + 3 * k + index, 32))
    return root


def _convlens(*args: str) -> None:
    try:
        main(list(args))
    except SystemExit as done:
        assert done.code in (0, None), (args, done.code)


def test_every_file_of_an_explain_audit_and_evaluate_comes_through_the_atomic_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(tmp_path / "data")
    placed: set[Path] = set()
    put_in_place = files._put_in_place

    def recording(temporary: Path, path: Path) -> None:
        placed.add(Path(os.path.abspath(path)))
        put_in_place(temporary, path)

    monkeypatch.setattr(files, "_put_in_place", recording)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    outs = {"explain": tmp_path / "explained", "audit": tmp_path / "audited",
            "evaluate": tmp_path / "evaluated"}
    _convlens("explain", str(data), "--out", str(outs["explain"]), "--method", "saliency", *TINY)
    _convlens("audit", str(data), "--out", str(outs["audit"]), *TINY)
    _convlens("evaluate", str(data), "--out", str(outs["evaluate"]), "--metric", "deletion",
              "--method", "saliency", *TINY)

    for command, out in outs.items():
        found = {Path(os.path.abspath(p)) for p in out.rglob("*") if p.is_file()}
        assert len(found) >= 3, (command, sorted(found))  # the run wrote its results
        unrecorded = {p for p in found - placed if p.name not in OTHER_MECHANISM}
        assert not unrecorded, (command, sorted(str(p.relative_to(out)) for p in unrecorded))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()
                and not any(root in p.parents for root in [data, *outs.values()])]
