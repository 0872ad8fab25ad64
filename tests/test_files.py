"""convlens.files: the one writer and the output-folder claim, at the library level."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from convlens.errors import OutputBusyError
from convlens.files import (
    MANIFEST,
    OUTPUT_MARKER,
    claim_output,
    folder_lock,
    write_json_atomic,
    write_text_atomic,
)


def test_a_file_system_without_locks_still_runs(tmp_path: Path, monkeypatch) -> None:
    import fcntl

    def no_locks(*_args: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with folder_lock(tmp_path):
        write_text_atomic(tmp_path / "a.txt", "ok")
    assert (tmp_path / "a.txt").read_text() == "ok"


def test_the_lock_is_reentrant_in_one_process_and_named_to_others(tmp_path: Path) -> None:
    with folder_lock(tmp_path, what="convlens audit"), folder_lock(tmp_path):
        pass  # the same process may take it again (a job and its store)
    import subprocess
    import sys

    with folder_lock(tmp_path, what="convlens audit"):
        code = ("import sys; from convlens.files import folder_lock\n"
                "try:\n    with folder_lock(sys.argv[1]): pass\n"
                "except Exception as e:\n    print(type(e).__name__, e)")
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                                capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith(OutputBusyError.__name__), result
    assert "convlens audit" in result.stdout and "PID" in result.stdout


def test_overwrite_deletes_only_listed_files_inside_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "precious.txt"
    outside.write_text("mine")
    with claim_output(out):
        write_json_atomic(out / "sub" / "a.json", {"x": 1})
    (out / "sub" / "mine.txt").write_text("mine")
    with open(out / MANIFEST, "a") as stream:  # a hand-edited manifest, and a torn last line
        stream.write(json.dumps("../precious.txt") + "\n" + '"sub/b.js')
    with claim_output(out, overwrite=True):
        pass
    assert outside.read_text() == "mine"
    assert not (out / "sub" / "a.json").exists()
    assert (out / "sub" / "mine.txt").read_text() == "mine"


def test_a_folder_from_convlens_8_adopts_only_convlens_kinds_of_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "store").mkdir(parents=True)
    (out / OUTPUT_MARKER).write_text("written by convlens")
    (out / "store" / "000001.jsonl").write_text("{}\n")
    (out / "store" / "thesis.tex").write_text("mine")
    (out / "audit.json").write_text("{}")
    with claim_output(out, overwrite=True):
        pass
    assert sorted(p.name for p in out.rglob("*") if p.is_file()
                  and not p.name.startswith(".")) == ["thesis.tex"]


def test_non_finite_numbers_become_null(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "a.json", {"x": float("nan"), "y": [float("inf"), 1.0]})
    assert json.loads(path.read_text()) == {"x": None, "y": [None, 1.0]}


def test_undecodable_names_round_trip_through_json(tmp_path: Path) -> None:
    import os

    name = os.fsdecode(b"bad\xff\xfe.png")
    path = write_json_atomic(tmp_path / "a.json", {"path": name})
    path.read_bytes().decode("utf-8")  # valid UTF-8
    assert os.fsencode(json.loads(path.read_text())["path"]) == b"bad\xff\xfe.png"


@pytest.mark.parametrize("relation", ["same", "parent"])
def test_an_output_that_is_or_holds_an_input_is_refused(tmp_path: Path, relation: str) -> None:
    from convlens.errors import OutputError

    data = tmp_path / "data"
    data.mkdir()
    out = data if relation == "same" else tmp_path
    with pytest.raises(OutputError, match="is the input|holds the input"), \
            claim_output(out, inputs=[data]):
        pass
