"""Dataset reading: layouts, exclusions, broken links, decoding problems as records."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.errors import ConvlensError
from convlens.io.datasets import (
    OUTPUT_MARKER,
    batches,
    content_key,
    read_dataset,
    scan_inputs,
    unknown_labels,
)
from convlens.io.images import load_image
from convlens.preprocessing import Preprocessing

PRE = Preprocessing(input_size=16)


def _photo(path: Path, seed: int = 0, size: tuple[int, int] = (20, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_imagefolder_labels_relpaths_and_unknown_labels(tmp_path: Path) -> None:
    _photo(tmp_path / "cat" / "a.png")
    _photo(tmp_path / "cat" / "deep" / "b.png", 1)
    _photo(tmp_path / "dog" / "c.png", 2)
    (tmp_path / ".hidden").mkdir()
    _photo(tmp_path / ".hidden" / "d.png")
    dataset = read_dataset(tmp_path)
    assert dataset.layout == "imagefolder"
    assert [(e.relpath, e.label) for e in dataset.entries] == [
        ("cat/a.png", "cat"), ("cat/deep/b.png", "cat"), ("dog/c.png", "dog")]
    assert unknown_labels(dataset, ["cat", "tabby"]) == ["dog"]


def test_csv_paths_are_relative_to_the_csv(tmp_path: Path) -> None:
    _photo(tmp_path / "data" / "imgs" / "a.png")
    csv = tmp_path / "data" / "labels.csv"
    csv.write_text("path,label\nimgs/a.png,cat\nimgs/missing.png,dog\n,cat\n")
    dataset = read_dataset(csv)
    assert dataset.layout == "csv"
    assert [(e.relpath, e.label) for e in dataset.entries] == [
        ("imgs/a.png", "cat"), ("imgs/missing.png", "dog")]
    assert dataset.entries[0].path == tmp_path / "data" / "imgs" / "a.png"
    assert "line 4: empty path" in dataset.problems[0].reason
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.png,cat\n")
    with pytest.raises(ConvlensError, match="no 'path' column"):
        read_dataset(bad)


def test_walk_skips_output_folders_excluded_paths_and_reports_broken_links(tmp_path: Path
                                                                           ) -> None:
    _photo(tmp_path / "in" / "a.png")
    _photo(tmp_path / "in" / "old-out" / "x.png")
    (tmp_path / "in" / "old-out" / OUTPUT_MARKER).write_text("")
    _photo(tmp_path / "in" / "mine" / "y.png")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "in" / "broken.png")
    dataset = scan_inputs([tmp_path / "in"], exclude=[tmp_path / "in" / "mine"])
    assert [e.path.name for e in dataset.entries] == ["a.png"]
    assert len(dataset.problems) == 1
    assert dataset.problems[0].path.name == "broken.png"
    assert "broken symbolic link" in dataset.problems[0].reason
    assert "nowhere.png" in dataset.problems[0].reason
    plain = read_dataset(tmp_path / "in", layout="plain", exclude=[tmp_path / "in" / "mine"])
    assert [e.relpath for e in plain.entries] == ["a.png"]


def test_explicit_file_in_excluded_folder_is_a_problem(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "out" / "a.png")
    dataset = scan_inputs([photo], exclude=[tmp_path / "out"])
    assert dataset.entries == [] and "output folder" in dataset.problems[0].reason


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_become_problems_and_batches_match_prepare(tmp_path: Path, workers: int
                                                             ) -> None:
    from convlens.models.classifier import Classifier

    good = [_photo(tmp_path / f"g{i}.png", i, (20 + i, 30)) for i in range(3)]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    dataset = scan_inputs([tmp_path])
    got = list(batches(dataset.entries, PRE, batch_size=2, workers=workers))
    assert [b.size for b in got] == [2, 2]
    problems = [p for b in got for p in b.problems]
    assert [p.path.name for p in problems] == ["bad.png"]
    assert "not a recognised image format" in problems[0].reason
    items = [i for b in got for i in b.items]
    assert [i.path.name for i in items] == ["g0.png", "g1.png", "g2.png"]
    classifier = Classifier(torch.nn.Conv2d(3, 2, 1), input_size=16, device="cpu")
    expected = classifier.prepare([str(p) for p in good])
    x = torch.cat([b.x for b in got if b.x is not None])
    torch.testing.assert_close(x, expected.x)
    assert [i.geometry for i in items] == expected.geometries
    assert expected.images == [None] * 3  # files: decoded again (full size) when shown
    assert [b.image(k).size for b in got for k in range(len(b.items))] == [
        load_image(p).size for p in good]


def test_keys_follow_content_and_skip_avoids_decoding(tmp_path: Path) -> None:
    path = _photo(tmp_path / "a.png")
    dataset = scan_inputs([path])
    first = next(batches(dataset.entries, PRE, salt="cfg"))
    key = first.items[0].key
    assert key == content_key(dataset.entries[0].relpath, first.items[0].digest, "cfg")
    skipped = next(batches(dataset.entries, PRE, salt="cfg", skip={key}))
    assert skipped.x is None and [i.key for i in skipped.skipped] == [key]
    other = next(batches(dataset.entries, PRE, salt="other"))
    assert other.items[0].key != key
    _photo(path, seed=5)
    assert next(batches(dataset.entries, PRE, salt="cfg")).items[0].key != key


def test_csv_rows_that_cannot_be_meant_are_refused_naming_the_lines(tmp_path: Path) -> None:
    _photo(tmp_path / "a.png")
    _photo(tmp_path / "b.png")
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"path,label\nb.png,cat\na\x00.png,cat\n")  # Python's csv reads NULs
    with pytest.raises(ConvlensError, match=r"nul\.csv: line 3 holds a NUL byte"):
        read_dataset(nul)
    twice = tmp_path / "twice.csv"
    twice.write_text("path,label\na.png,cat\nb.png,dog\n./a.png,dog\n")
    with pytest.raises(ConvlensError, match=r"lines 2 and 4 list \./a\.png with different "
                                            r"labels \('cat' and 'dog'\)"):
        read_dataset(twice)
    # the same row again loses nothing: it is read once, not counted twice
    again = tmp_path / "again.csv"
    again.write_text("path,label\na.png,cat\n\"b.png\",dog\na.png,cat\n")
    assert [(e.relpath, e.label) for e in read_dataset(again).entries] == [
        ("a.png", "cat"), ("b.png", "dog")]
