"""Nothing a user owns is lost: output folders through the real commands (convlens 9, items 1-6).

Each test drives the installed ``convlens`` script on the tiny model, the way a user's shell
does, and checks the folder afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_support import TINY, assert_one_error, photo, run

from convlens.files import LOCK_FILE, MANIFEST, OUTPUT_MARKER, folder_lock


def _labelled_folder(root: Path, per_class: int = 3) -> Path:
    for index, label in enumerate(["ant", "bee"]):
        (root / label).mkdir(parents=True)
        for k in range(per_class):
            photo(root / label / f"{label}{k}.png", size=(40 + 3 * k + index, 32))
    return root


EXTRA = {"explain": ["--method", "saliency"], "evaluate": ["--metric", "deletion"]}
"""What each command needs beyond the data and --out to be quick on the tiny model."""


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return _labelled_folder(tmp_path / "data")


# ------------------------------------------------------------ 1. --overwrite


def test_explain_overwrite_keeps_a_users_file_in_records(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "out"
    assert run("explain", str(data), "--out", str(out), *EXTRA["explain"], *TINY).returncode == 0
    ledger = out / "records" / "ledger.csv"
    ledger.write_text("mine\n")
    (out / "notes.md").write_text("mine too\n")
    result = run("explain", str(data), "--out", str(out), "--method", "gradcam", "--overwrite",
                 *TINY)
    assert result.returncode == 0, result.stderr
    assert ledger.read_text() == "mine\n" and (out / "notes.md").read_text() == "mine too\n"
    assert not list(out.glob("*.saliency.png"))  # the earlier run's files are gone
    assert len(list(out.glob("*.gradcam.png"))) == 6


def test_audit_overwrite_keeps_a_users_file_in_store(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "out"
    assert run("audit", str(data), "--out", str(out), *TINY).returncode == 0
    thesis = out / "store" / "thesis.tex"
    thesis.write_text("\\section{mine}\n")
    result = run("audit", str(data), "--out", str(out), "--overwrite", *TINY)
    assert result.returncode == 0, result.stderr
    assert thesis.read_text() == "\\section{mine}\n"
    assert json.loads((out / "audit.json").read_text())["images"]


@pytest.mark.parametrize("command", ["audit", "explain", "evaluate"])
def test_a_users_non_empty_folder_is_refused_naming_what_is_there(
        tmp_path: Path, data: Path, command: str) -> None:
    mine = tmp_path / "mine"
    (mine / "store").mkdir(parents=True)
    (mine / "store" / "thesis.tex").write_text("x")
    (mine / "audit.json").write_text('{"mine": true}')
    extra = EXTRA.get(command, [])
    result = run(command, str(data), "--out", str(mine), "--overwrite" if command != "evaluate"
                 else "--bootstrap=0", *extra, *TINY)
    assert_one_error(result, 2, str(mine), "not empty", "audit.json", "store/")
    assert (mine / "audit.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in mine.rglob("*")) == ["audit.json", "store", "thesis.tex"]


def test_an_empty_folder_of_the_users_is_accepted(tmp_path: Path, data: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run("audit", str(data), "--out", str(empty), *TINY).returncode == 0
    assert (empty / OUTPUT_MARKER).is_file() and (empty / MANIFEST).is_file()


def test_a_user_file_put_under_a_convlens_name_is_not_replaced(tmp_path: Path,
                                                               data: Path) -> None:
    out = tmp_path / "out"
    assert run("explain", str(data / "ant"), "--out", str(out), "--method", "saliency",
               *TINY).returncode == 0
    (out / "bee0.saliency.png").write_bytes(b"my own picture")
    result = run("explain", str(data), "--out", str(out), "--method", "saliency", *TINY)
    assert_one_error(result, 2, "bee0.saliency.png", "convlens did not write it")
    assert (out / "bee0.saliency.png").read_bytes() == b"my own picture"


# ---------------------------------------------------------- 2. two runs at once


@pytest.mark.parametrize("command", ["audit", "explain", "evaluate"])
def test_a_second_run_into_a_busy_folder_exits_2_naming_the_holder(
        tmp_path: Path, data: Path, command: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    extra = EXTRA.get(command, [])
    with folder_lock(out, what="convlens audit"):
        result = run(command, str(data), "--out", str(out), *extra, *TINY)
    assert_one_error(result, 2, f"PID {os.getpid()}", "convlens audit", str(out))
    assert not (out / "audit.json").exists() and not (out / "results.json").exists()
    # and once the holder is gone the same command runs
    assert run(command, str(data), "--out", str(out), *extra, *TINY).returncode == 0
    assert (out / LOCK_FILE).read_text() == ""  # released: no PID left behind


def test_two_audits_started_together_lose_no_image(tmp_path: Path) -> None:
    import subprocess

    from cli_support import script

    data = _labelled_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "out"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    both = [subprocess.Popen([*script(), "audit", str(data), "--out", str(out), "--batch-size",
                              "2", *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(2)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in both]
    codes = sorted(code for code, _ in outcomes)
    assert codes in ([0, 0], [0, 2]), outcomes
    for code, stderr in outcomes:
        if code == 2:
            assert "is writing into" in stderr and "PID" in stderr
    audit = json.loads((out / "audit.json").read_text())
    assert len(audit["images"]) == 12 and audit["errors"] == []


def test_store_shards_never_replace_each_other(tmp_path: Path) -> None:
    from convlens.store import ResultStore

    first = ResultStore(tmp_path / "s", {"a": 1})
    second = ResultStore(tmp_path / "s", {"a": 1})  # opened before either wrote
    first.append([{"key": "x"}])
    second.append([{"key": "y"}])
    assert sorted(r["key"] for r in ResultStore.open(tmp_path / "s").records()) == ["x", "y"]


# ------------------------------------------------------- 3. undecodable names


@pytest.mark.parametrize("command", ["audit", "explain", "evaluate"])
def test_a_file_name_that_is_not_utf8_is_recorded_and_the_run_completes(
        tmp_path: Path, data: Path, command: str) -> None:
    if os.fsencode("x") != b"x" or not hasattr(os, "fsdecode"):
        pytest.skip("needs a POSIX file system")
    raw = os.fsencode(data / "ant") + b"/bad\xff\xfe.png"
    os.rename(data / "ant" / "ant0.png", raw)
    out = tmp_path / "out"
    extra = EXTRA.get(command, [])
    result = run(command, str(data), "--out", str(out), *extra, *TINY)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    name = {"audit": "audit.json", "explain": "results.json",
            "evaluate": "evaluation.json"}[command]
    text = (out / name).read_text(encoding="utf-8")  # valid UTF-8
    assert "\\udcff\\udcfe" in text
    found = json.dumps(json.loads(text))
    assert "bad" in found
    paths = [os.fsencode(p) for p in _paths(json.loads(text)) if "bad" in p]
    assert paths and paths[0].endswith(b"bad\xff\xfe.png")  # the original bytes come back
    for page in out.glob("*.html"):
        assert page.stat().st_size > 0
        page.read_text(encoding="utf-8")


def _paths(data: object) -> list[str]:
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ("path", "source", "images") and isinstance(value, str):
                found.append(value)
            found += _paths(value)
    elif isinstance(data, list):
        for value in data:
            found += [value] if isinstance(value, str) else _paths(value)
    return found


# --------------------------------------------------------- 4. output = input


@pytest.mark.parametrize("command", ["audit", "explain", "evaluate"])
def test_reading_from_the_output_folder_is_refused(tmp_path: Path, data: Path,
                                                   command: str) -> None:
    out = tmp_path / "out"
    assert run("audit", str(data), "--out", str(out), *TINY).returncode == 0
    before = (out / "audit.json").read_bytes()
    extra = EXTRA.get(command, [])
    result = run(command, str(out), "--out", str(out), *extra, *TINY)
    assert_one_error(result, 2, "is the input", "--out")
    assert (out / "audit.json").read_bytes() == before
    result = run(command, str(data / "ant"), "--out", str(data), *extra, *TINY)
    assert_one_error(result, 2, "holds the input")


# --------------------------------------------------------- 5. atomic writes


def test_evaluate_on_a_full_disk_keeps_the_previous_json(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "out"
    args = ["evaluate", str(data), "--out", str(out), "--metric", "deletion", *TINY]
    assert run(*args).returncode == 0
    before = (out / "evaluation.json").read_bytes()
    json.loads(before)
    limited = tmp_path / "limited.py"  # the next file written fails with ENOSPC
    limited.write_text(
        "import errno, os, sys, runpy\n"
        "real = os.fdopen\n"
        "def full(fd, mode='r', *a, **k):\n"
        "    stream = real(fd, mode, *a, **k)\n"
        "    if 'w' in mode:\n"
        "        def write(data):\n"
        "            raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "        stream.write = write\n"
        "    return stream\n"
        "os.fdopen = full\n"
        "sys.argv = ['convlens', *sys.argv[1:]]\n"
        "from convlens.cli import main\n"
        "main()\n")
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(limited), *args[0:]], capture_output=True,
                            text=True, env={**os.environ, "MPLBACKEND": "Agg"}, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "no space left" in result.stderr and "Traceback" not in result.stderr
    assert (out / "evaluation.json").read_bytes() == before
    assert [p for p in out.iterdir() if p.stat().st_size == 0] == [out / LOCK_FILE]


# ---------------------------------------------------------- 6. the batch size


def test_a_resume_with_another_batch_size_is_refused_with_the_fix(tmp_path: Path,
                                                                  data: Path) -> None:
    out = tmp_path / "out"
    assert run("audit", str(data), "--out", str(out), "--batch-size", "1",
               *TINY).returncode == 0
    result = run("audit", str(data), "--out", str(out), "--batch-size", "4", *TINY)
    assert_one_error(result, 2, "batch size 1", "--batch-size 1", "--overwrite")
    stored = json.loads((out / "store" / "config.json").read_text())
    assert stored["config"]["batch_size"] == 1


@pytest.mark.parametrize("command", ["evaluate", "visualize", "activations"])
def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path: Path, data: Path,
                                                             command: str) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    args = {"evaluate": ["evaluate", str(data), "--metric", "deletion"],
            "visualize": ["visualize", "--class", "1", "--steps", "1", "--size", "8"],
            "activations": ["activations", str(data / "ant" / "ant0.png")]}[command]
    result = run(*args, "--out", str(notes), *TINY, "--model", "no_such_module:build")
    # the model is never loaded: the folder is checked first
    assert_one_error(result, 2, str(notes), "is a file, not a folder")
    assert notes.read_text() == "mine\n"
