"""The one folder walker (issue 19, item 3): every entry point reads a folder the same way.

One tricky tree (nested folders, a hidden file and folder, a symlink loop, a symlinked folder
leading outside, a broken link, a pipe named like an image, a convlens output folder,
non-image files, upper-case extensions) is read through every entry point that finds images:
``convlens explain`` and ``convlens predict`` (the installed script), ``expand_inputs``,
``scan_inputs`` and ``read_dataset``'s plain, ImageFolder and automatic layouts. Each must give
the same files, in the same order, and the same problems. The rules are
docs/architecture.md, "Finding images".
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest
from cli_support import TINY, photo, run

import convlens
from convlens.io import walk
from convlens.io.datasets import OUTPUT_MARKER, read_dataset, scan_inputs
from convlens.io.images import expand_inputs

FILES = ["data/cat/B.JPG", "data/cat/a.png", "data/cat/deep/c.jpeg", "data/dog/e.PNG"]
"""What the tree below holds for a reader, in the one order (path text, upper case first)."""

PROBLEMS = [
    ("data/dog/broken.png", "broken symbolic link (its target gone.png does not exist)"),
    ("data/dog/outside", "symbolic link to a folder outside the folder read, not followed; "
                         "pass its target instead"),
    ("data/dog/pipe.png", "not a regular file (device, pipe or socket)"),
]
"""The problems it holds, in walk order (names sorted, depth first)."""


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path/data`` as FILES and PROBLEMS describe it; the working folder is tmp_path."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs symbolic links and named pipes (POSIX)")
    data = tmp_path / "data"
    for rel in ["cat/a.png", "cat/B.JPG", "cat/deep/c.jpeg", "dog/e.PNG",
                "cat/.hidden.png", ".cache/f.png", "dog/old-run/x.png", "elsewhere/g.png"]:
        where = (tmp_path if rel.startswith("elsewhere") else data) / rel
        where.parent.mkdir(parents=True, exist_ok=True)
        photo(where, size=(20, 16))
    (data / "dog" / "old-run" / OUTPUT_MARKER).write_text("")
    (data / "cat" / "notes.txt").write_text("not an image")
    (data / "README.md").write_text("a dataset")
    (data / "cat" / "loop").symlink_to(data, target_is_directory=True)
    (data / "dog" / "outside").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (data / "dog" / "broken.png").symlink_to("gone.png")
    os.mkfifo(data / "dog" / "pipe.png")
    monkeypatch.chdir(tmp_path)
    return data


def _problems(problems) -> list[tuple[str, str]]:
    return [(Path(p.path).as_posix(), p.reason) for p in problems]


def test_every_library_entry_point_reads_the_tree_alike(tree: Path) -> None:
    images, problems = expand_inputs(["data"])
    assert [p.as_posix() for p in images] == FILES
    assert _problems(problems) == PROBLEMS

    plain = scan_inputs(["data"])
    assert [e.relpath for e in plain.entries] == FILES
    assert _problems(plain.problems) == PROBLEMS

    for layout in ("plain", "imagefolder", "auto"):
        dataset = read_dataset("data", layout=layout)
        assert [e.path.as_posix() for e in dataset.entries] == FILES, layout
        assert [e.relpath for e in dataset.entries] == [f[len("data/"):] for f in FILES]
        assert _problems(dataset.problems) == PROBLEMS, layout
    assert read_dataset("data").layout == "imagefolder"
    assert [e.label for e in read_dataset("data").entries] == ["cat", "cat", "cat", "dog"]


def test_an_unreadable_folder_is_the_same_problem_everywhere(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod cannot lock out root (this suite may run as root): refuse the listing instead
    real = os.scandir

    def scandir(path):
        if Path(path).name == "deep":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(walk.os, "scandir", scandir)
    expected = [("data/cat/deep", "cannot read folder (Permission denied)"), *PROBLEMS]
    files = [f for f in FILES if "/deep/" not in f]
    images, problems = expand_inputs(["data"])
    assert ([p.as_posix() for p in images], _problems(problems)) == (files, expected)
    plain = scan_inputs(["data"])
    assert ([e.relpath for e in plain.entries], _problems(plain.problems)) == (files, expected)
    for layout in ("plain", "imagefolder"):
        dataset = read_dataset("data", layout=layout)
        assert [e.path.as_posix() for e in dataset.entries] == files
        assert _problems(dataset.problems) == expected


def test_explain_and_predict_read_the_tree_as_the_library_does(tree: Path) -> None:
    # the output folder inside the tree is never read, on the first run as on a rerun
    cwd = tree.parent
    result = run("explain", "data", "--method", "saliency", "--out", "data/out", *TINY,
                 cwd=cwd, FORCE_COLOR=None, NO_COLOR="1")
    assert result.returncode == 1, result.stderr  # partial: the problems are reported
    results = json.loads((tree / "out" / "results.json").read_text())
    assert [Path(r["path"]).as_posix() for r in results["images"]] == FILES
    assert [(Path(e["path"]).as_posix(), e["error"]) for e in results["errors"]] == PROBLEMS
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {path}: {reason}" for path, reason in PROBLEMS]

    result = run("predict", "data", "--top", "1", *TINY, cwd=cwd, FORCE_COLOR=None,
                 NO_COLOR="1")
    assert result.returncode == 1, result.stderr
    assert re.findall(r"data/\S+", result.stdout) == FILES
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {path}: {reason}" for path, reason in PROBLEMS]


def test_a_named_output_folder_or_file_inside_one_is_a_problem(tree: Path) -> None:
    images, problems = expand_inputs(["data/dog/old-run", "data/cat/notes.txt"])
    assert images == []
    assert _problems(problems) == [
        ("data/dog/old-run", "is a convlens output folder (or inside one); not read as input"),
        ("data/cat/notes.txt", "not an image file (extension '.txt'); expected one of .bmp, "
                               ".gif, .jpeg, .jpg, .png, .tif, .tiff, .webp")]
    dataset = scan_inputs(["data/cat/a.png"], exclude=["data/cat"])
    assert _problems(dataset.problems) == [
        ("data/cat/a.png", "is inside the output folder; not read as input")]
    assert _problems(read_dataset("data/dog/old-run", layout="plain").problems) == [
        ("data/dog/old-run", "is a convlens output folder (or inside one); not read as input")]


# ------------------------------------------------------------------------- one walker

LISTINGS = {"walk", "rglob", "iterdir", "scandir", "listdir", "glob", "iglob"}
"""Calls that list a folder: ``os.walk``, ``Path.rglob``, ``os.scandir``, ``glob.glob``..."""

NOT_IMAGE_FOLDERS = {
    "files.py": "claims and cleans convlens's own output folders (marker, manifest, temps)",
    "store.py": "lists its own shards in the results store",
    "present/pages.py": "removes its own stale index pages from the output folder",
}
"""Modules that list folders convlens wrote, never a folder of a user's images."""


def _listing_calls() -> dict[str, list[int]]:
    source = Path(convlens.__file__).resolve().parent
    found: dict[str, list[int]] = {}
    for path in sorted(source.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lines = [node.lineno for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                 and node.func.attr in LISTINGS and not _is_ast_walk(node.func)]
        if lines:
            found[path.relative_to(source).as_posix()] = lines
    return found


def _is_ast_walk(func: ast.Attribute) -> bool:
    return isinstance(func.value, ast.Name) and func.value.id == "ast"


def test_one_walker_lists_folders_of_images() -> None:
    calls = _listing_calls()
    assert calls.get("io/walk.py"), "the walker lists folders with os.scandir"
    others = {module: lines for module, lines in calls.items()
              if module != "io/walk.py" and module not in NOT_IMAGE_FOLDERS}
    assert others == {}, ("list image folders through convlens.io.walk (walk_images, "
                          "find_images, top_level), not on your own")
    assert len(calls["io/walk.py"]) == 1  # one os.scandir, inside the one walk


def test_the_output_marker_is_named_once() -> None:
    source = Path(convlens.__file__).resolve().parent
    naming = sorted(path.relative_to(source).as_posix() for path in source.rglob("*.py")
                    if '".convlens-output"' in path.read_text(encoding="utf-8"))
    assert naming == ["files.py"]
