"""The results store: atomic writes, append-only shards, configuration fingerprints."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens import store as store_module
from convlens.errors import ConvlensError, OutputError, StoreMismatchError
from convlens.io.datasets import OUTPUT_MARKER as READER_MARKER
from convlens.store import (
    OUTPUT_MARKER,
    ResultStore,
    atomic_output,
    ensure_folder,
    mark_output_folder,
    write_array_atomic,
    write_bytes_atomic,
    write_json_atomic,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_marker_names_agree() -> None:
    assert OUTPUT_MARKER == READER_MARKER


def test_atomic_files_get_normal_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        json_path = write_json_atomic(tmp_path / "a.json", {"é": 1})
        bytes_path = write_bytes_atomic(tmp_path / "b.bin", b"x")
        with atomic_output(tmp_path / "c.png") as temporary:
            assert temporary.suffix == ".png" and temporary.parent == tmp_path
            Image.new("RGB", (4, 4)).save(temporary)
    finally:
        os.umask(old)
    for path in (json_path, bytes_path, tmp_path / "c.png"):
        assert _mode(path) == 0o644, path
    assert json.loads(json_path.read_text(encoding="utf-8")) == {"é": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "c.png"]


def test_full_disk_is_one_error_and_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = write_json_atomic(tmp_path / "results.json", {"old": True})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "replace", full)
    with pytest.raises(OutputError) as caught:
        write_json_atomic(target, {"new": True})
    assert isinstance(caught.value, ConvlensError)
    assert str(target) in str(caught.value) and "no space left" in str(caught.value)
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left


def test_writer_failing_inside_atomic_output_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="permission denied"), \
            atomic_output(tmp_path / "x.png") as temporary:
        temporary.write_bytes(b"half")
        raise PermissionError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []


def test_folder_errors_name_the_path(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        ensure_folder(file)
    with pytest.raises(OutputError, match="part of the path is a file") as caught:
        write_bytes_atomic(file / "sub" / "x.json", b"{}")
    assert str(file / "sub") in str(caught.value)


def test_writable_probe_refuses_an_existing_folder_that_cannot_be_written(
        tmp_path: Path, monkeypatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_open = os.open

    def kernel_open(path, flags, *args, **kwargs):  # as chmod 500 would, but root ignores it
        if Path(path).parent == locked and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(store_module.os, "open", kernel_open)
    assert ensure_folder(locked) == locked  # without the probe: it exists, that is all
    with pytest.raises(OutputError) as caught:
        ensure_folder(locked, writable=True)
    assert caught.value.path == locked
    assert str(caught.value) == (f"cannot write {locked}: permission denied; choose a folder "
                                 "you can write to")


def test_writable_probe_leaves_nothing_and_creates_missing_folders(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    assert ensure_folder(folder, writable=True) == folder
    assert list(folder.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        ensure_folder(tmp_path / "file", writable=True)


def test_arrays_roundtrip(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.float16).reshape(2, 3)
    write_array_atomic(tmp_path / "a.npy", array)
    write_array_atomic(tmp_path / "b.npz", {"k": array})
    assert np.array_equal(np.load(tmp_path / "a.npy"), array)
    assert np.array_equal(np.load(tmp_path / "b.npz")["k"], array)


def test_store_appends_shards_and_keeps_keys(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "s", {"model": "m", "methods": ["gradcam"]})
    assert (tmp_path / "s" / OUTPUT_MARKER).is_file()
    first = store.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}],
                         arrays={"maps": np.ones((2, 3, 3), np.float16)})
    second = store.append([{"key": "c", "v": 3}], arrays={"named": {"c": np.zeros(2)}})
    assert first.name == "000001.jsonl" and second.name == "000002.jsonl"
    first_bytes = first.read_bytes()
    reopened = ResultStore(tmp_path / "s", {"methods": ["gradcam"], "model": "m"})
    assert reopened.done_keys() == {"a", "b", "c"}
    assert [r["v"] for r in reopened.records()] == [1, 2, 3]
    assert reopened.read_array(first, "maps").shape == (2, 3, 3)
    assert set(reopened.read_array(second, "named")) == {"c"}
    reopened.append([{"key": "d"}])
    assert first.read_bytes() == first_bytes  # nothing rewritten
    assert reopened.next_shard().name == "000004.jsonl"
    assert [r["key"] for r in ResultStore.open(tmp_path / "s").records()] == list("abcd")


def test_store_refuses_another_configuration_and_overwrite_clears(tmp_path: Path) -> None:
    ResultStore(tmp_path / "s", {"model": "m", "methods": ["gradcam"]}).append([{"key": "a"}])
    with pytest.raises(StoreMismatchError) as caught:
        ResultStore(tmp_path / "s", {"model": "m", "methods": ["saliency"]})
    message = str(caught.value)
    assert "methods: ['gradcam'] -> ['saliency']" in message and "--overwrite" in message
    assert "model" not in message.split("(")[1]
    fresh = ResultStore(tmp_path / "s", {"model": "m", "methods": ["saliency"]}, overwrite=True)
    assert fresh.done_keys() == set() and fresh.shards() == []


def test_store_removes_stale_temporaries(tmp_path: Path) -> None:
    folder = mark_output_folder(tmp_path / "s")
    stale = folder / ".000001.jsonl.abcd1234.convlens-tmp.jsonl"
    stale.write_text("half")
    ResultStore(folder, {"a": 1})
    assert not stale.exists()


def test_summary_is_replaced(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, {"a": 1})
    store.write_summary({"done": 1})
    store.write_summary({"done": 2})
    assert store.summary() == {"done": 2}


def test_records_sharing_a_key_in_one_shard_are_kept_duplicates_across_shards_not(
        tmp_path: Path) -> None:
    store = ResultStore(tmp_path, {"a": 1})
    store.append([{"key": "img", "rank": 0}, {"key": "img", "rank": 1}])
    store.append([{"key": "img", "rank": 0}, {"key": "other"}])
    assert [(r["key"], r.get("rank")) for r in store.records()] == [
        ("img", 0), ("img", 1), ("other", None)]
