"""The command line through its real entry point (the installed ``convlens`` script)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_support import TINY, script
from PIL import Image


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "MPLBACKEND": "Agg"}
    return subprocess.run([*script(), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def _photo(path: Path, size=(48, 40), mode="RGB", **save) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(
        mode).save(path, **save)
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = _photo(tmp_path / "good.png")
    truncated = tmp_path / "truncated.jpg"
    _photo(truncated, size=(64, 64), format="JPEG")
    truncated.write_bytes(truncated.read_bytes()[:300])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    return {
        "good": good, "missing": tmp_path / "missing.png", "truncated": truncated,
        "empty": empty, "text": text, "zero": _png_header_only(tmp_path / "zero.png", 0, 10),
        "bomb": _png_header_only(tmp_path / "bomb.png", 30000, 30000),
    }


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("predict", "layers", "methods", "explain", "demo"):
        assert command in result.stdout


def test_methods_lists_the_registry() -> None:
    import convlens as cl

    result = run("methods")
    assert result.returncode == 0
    for method in cl.methods():
        assert method.name in result.stdout


def test_bad_inputs_get_one_line_each_and_good_ones_are_processed(bad_inputs, tmp_path) -> None:
    out = tmp_path / "out"
    result = run("explain", *map(str, bad_inputs.values()), "--method", "gradcam,saliency",
                 "--out", str(out), *TINY)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    reasons = {
        "missing": "not found", "truncated": "truncated", "empty": "empty",
        "text": "not", "zero": "zero side", "bomb": "pixels",
    }
    for key, reason in reasons.items():
        line = next((line for line in lines if bad_inputs[key].name in line), None)
        assert line is not None, f"no error line for {key}: {result.stderr}"
        assert reason in line.lower(), line
    results = json.loads((out / "results.json").read_text())
    assert [Path(r["path"]).name for r in results["images"]] == ["good.png"]
    assert len(results["errors"]) == len(reasons)
    for name in ("good.gradcam.png", "good.saliency.png", "good.grid.png"):
        assert (out / name).is_file()


def test_explain_writes_results_and_names_stay_inside_out(tmp_path: Path) -> None:
    nested = tmp_path / "in" / ".." / "in"
    (tmp_path / "in").mkdir()
    _photo(tmp_path / "in" / "a photo (1).png")
    _photo(tmp_path / "in" / "b.jpg", format="JPEG")
    out = tmp_path / "out"
    result = run("explain", str(nested), "--method", "gradcam", "--target", "top:2",
                 "--out", str(out), *TINY)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert len(results["images"]) == 4  # two images x top-2 classes
    assert results["layer"] == "features"
    for record in results["images"]:
        assert record["target"]["label"] in ("ant", "bee", "cat", "dog")
        for name in record["files"].values():
            assert (out / name).resolve().parent == out.resolve()
    assert all(path.parent == out for path in out.iterdir())


@pytest.mark.parametrize("mode,save", [
    ("L", {}), ("RGBA", {}), ("P", {}), ("CMYK", {"format": "JPEG"}), ("I;16", {}),
])
def test_image_modes_are_converted(mode: str, save: dict, tmp_path: Path) -> None:
    path = tmp_path / ("img.jpg" if save.get("format") == "JPEG" else "img.png")
    if mode == "I;16":
        Image.fromarray((np.arange(40 * 48).reshape(40, 48) * 30).astype(np.uint16)).save(path)
    else:
        _photo(path, mode=mode, **save)
    result = run("predict", str(path), "--top", "2", *TINY)
    assert result.returncode == 0, result.stderr
    assert "img" in result.stdout


@pytest.mark.parametrize("args,needle", [
    (["--method", "gradcamm"], "unknown method 'gradcamm'; valid methods: "),
    (["--layer", "featurs"], "unknown layer 'featurs'"),
    (["--target", "zebra"], "unknown class 'zebra'"),
    (["--target", "top:0"], "positive integer"),
])
def test_unknown_choices_list_the_valid_ones(args, needle, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "p.png")
    result = run("explain", str(photo), "--out", str(tmp_path / "o"), *args, *TINY)
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 3


def test_layers_shows_names_types_and_the_default(tmp_path: Path) -> None:
    result = run("layers", *TINY[:4], "--input-size", "32")
    assert result.returncode == 0, result.stderr
    assert "features (default)" in result.stdout
    assert "Conv2d" in result.stdout and "8x32x32" in result.stdout


def test_unsafe_checkpoint_is_refused_with_the_fix(tmp_path: Path) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tiny_models import TinyVGG

    path = tmp_path / "whole_model.pt"
    torch.save(TinyVGG(), path)
    result = run("predict", str(_photo(tmp_path / "p.png")), "--model", str(path))
    assert result.returncode == 2
    assert "state_dict" in result.stderr and "--trust-model" in result.stderr


def test_bundled_model_predicts_the_sample_cat(tmp_path: Path) -> None:
    from convlens.io.samples import sample_paths

    paths = sample_paths(tmp_path)
    cat = next(p for p in paths if "chelsea" in p.name)
    result = run("predict", str(cat), "--top", "3", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert any(name in result.stdout for name in ("tabby", "tiger cat", "Egyptian cat"))
