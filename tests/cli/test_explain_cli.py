"""``convlens explain`` in-process: its own output is never input, one-line errors, options."""

from __future__ import annotations

import errno
import json
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from convlens.cli.app import app

FIXTURES = Path(__file__).parents[1] / "fixtures"
TINY = ["--model", f"{FIXTURES / 'tiny_model.py'}:build", "--labels",
        str(FIXTURES / "tiny_labels.txt"), "--input-size", "32", "--device", "cpu"]


def invoke(*args: str):
    return CliRunner().invoke(app, ["explain", *args, *TINY])


def photos(folder: Path, count: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 255, (40, 48, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i}.png")


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_explain_dot_twice_never_reads_its_own_output(tmp_path: Path, monkeypatch) -> None:
    photos(tmp_path)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        result = invoke(".", "--method", "gradcam")
        assert result.exit_code == 0, result.output + result.stderr
    out = tmp_path / "convlens-out"
    results = json.loads((out / "results.json").read_text())
    assert sorted(Path(r["path"]).name for r in results["images"]) == ["p0.png", "p1.png",
                                                                      "p2.png"]
    assert "3 image(s) already done" in result.stdout
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"p{i}.{kind}.png" for i in range(3) for kind in ("gradcam", "grid"))
    # another output folder: the first one is marked, so it is skipped too
    result = invoke(".", "--method", "gradcam", "--out", "second")
    assert result.exit_code == 0, result.stderr
    second = json.loads((tmp_path / "second" / "results.json").read_text())
    assert len(second["images"]) == 3


def test_out_on_an_existing_file_is_one_line(tmp_path: Path) -> None:
    photos(tmp_path / "in", 1)
    (tmp_path / "taken").write_text("x")
    result = invoke(str(tmp_path / "in"), "--out", str(tmp_path / "taken"))
    assert result.exit_code == 2
    assert "is a file, not a folder" in one_error_line(result)


def test_out_that_cannot_be_created_is_one_line(tmp_path: Path, monkeypatch) -> None:
    photos(tmp_path / "in", 1)
    (tmp_path / "file").write_text("x")
    result = invoke(str(tmp_path / "in"), "--out", str(tmp_path / "file" / "out"))
    assert result.exit_code == 2
    assert "part of the path is a file" in one_error_line(result)

    def refuse(self, *args, **kwargs):  # as chmod 555 would, but root ignores chmod
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    result = invoke(str(tmp_path / "in"), "--out", str(tmp_path / "new"))
    assert result.exit_code == 2
    line = one_error_line(result)
    assert str(tmp_path / "new") in line and "permission denied" in line


def test_full_disk_is_one_line_and_leaves_no_truncated_file(tmp_path: Path, monkeypatch
                                                            ) -> None:
    photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert invoke(str(tmp_path / "in" / "p0.png"), "--method", "gradcam", "--out",
                  str(out)).exit_code == 0
    original = Image.Image.save

    def full_disk(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n half a picture")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    result = invoke(str(tmp_path / "in"), "--method", "gradcam", "--out", str(out))
    monkeypatch.setattr(Image.Image, "save", original)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "no space left on the device" in line and str(out) in line
    for png in out.glob("*.png"):
        Image.open(png).verify()  # every PNG there is complete
    assert not [p for p in out.iterdir() if "convlens-tmp" in p.name]
    results = json.loads((out / "results.json").read_text())
    assert [Path(r["path"]).name for r in results["images"]] == ["p0.png"]
    # once there is room again, the same command finishes the job
    result = invoke(str(tmp_path / "in"), "--method", "gradcam", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert len(json.loads((out / "results.json").read_text())["images"]) == 3


def test_results_json_has_the_permissions_of_the_pngs(tmp_path: Path) -> None:
    photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert invoke(str(tmp_path / "in"), "--method", "gradcam", "--out", str(out)).exit_code == 0
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [out / "results.json", *out.glob("*.png")]}
    assert len(modes) == 1 and modes.pop() & 0o044 == 0o044


def test_option_flag_is_validated_and_recorded(tmp_path: Path) -> None:
    photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    result = invoke(str(tmp_path / "in"), "--method", "saliency,integrated_gradients",
                    "--option", "integrated_gradients.steps=3", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["options"] == {"integrated_gradients": {"steps": 3}}
    result = invoke(str(tmp_path / "in"), "--method", "integrated_gradients",
                    "--option", "integrated_gradients.stepz=3", "--out", str(tmp_path / "o2"))
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "has no option 'stepz'; did you mean 'steps'?; its options are: " in line
    assert "steps=50" in line
    assert "steps=" in result.stderr
    result = invoke(str(tmp_path / "in"), "--method", "gradcam",
                    "--option", "saliency.abs=1", "--out", str(tmp_path / "o3"))
    assert result.exit_code == 2
    assert "not among the methods of this run (gradcam)" in one_error_line(result)


def test_another_configuration_needs_overwrite(tmp_path: Path) -> None:
    photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert invoke(str(tmp_path / "in"), "--method", "gradcam", "--out", str(out)).exit_code == 0
    result = invoke(str(tmp_path / "in"), "--method", "saliency", "--out", str(out))
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "methods: ['gradcam'] -> ['saliency']" in line and "--overwrite" in line
    result = invoke(str(tmp_path / "in"), "--method", "saliency", "--out", str(out),
                    "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert not list(out.glob("*.gradcam.png"))


@pytest.mark.parametrize("args,needle", [
    (["--normalize", "run"], "--normalize must be 'image' or 'batch'"),
    (["--option", "gradcam"], "--option takes METHOD.NAME=VALUE"),
    (["--engine", "spark"], "--engine must be one of local, ray; got 'spark'"),
    (["--actors", "2"], "--actors only apply with --engine ray"),
    (["--engine", "ray", "--workers", "2"], "--workers sets the local engine's decoding"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    photos(tmp_path / "in", 1)
    result = invoke(str(tmp_path / "in"), "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == 2
    assert needle in one_error_line(result)


def test_max_pixels_refuses_large_photos_and_keeps_the_rest(tmp_path: Path) -> None:
    photos(tmp_path / "in", count=1)
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "small.png")
    result = invoke(str(tmp_path / "in"), "--method", "gradcam", "--max-pixels", "100",
                    "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output + result.stderr
    assert "--max-pixels" in result.stderr and "p0.png" in result.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [Path(r["path"]).name for r in results["images"]] == ["small.png"]


def test_pixel_maps_get_a_readable_view_on_the_page(tmp_path: Path) -> None:
    photos(tmp_path / "in", count=1)
    result = invoke(str(tmp_path / "in"), "--method", "gradcam,saliency",
                    "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output + result.stderr
    record = json.loads((tmp_path / "out" / "results.json").read_text())["images"][0]
    assert set(record["views"]) == {"saliency"}  # gradcam is smooth: the overlay reads well
    page = (tmp_path / "out" / "index.html").read_text()
    for name in record["views"]["saliency"].values():
        assert (tmp_path / "out" / name).is_file()
        assert name in page


def test_engine_local_writes_what_the_default_run_writes(tmp_path: Path) -> None:
    """``convlens explain --engine local --workers 1`` (the installed script) writes the files
    the default command writes."""
    from cli_support import TINY as SCRIPT_TINY
    from cli_support import run

    photos(tmp_path / "in", 3)
    args = ["explain", str(tmp_path / "in"), "--method", "gradcam,saliency", "--batch-size",
            "2", *SCRIPT_TINY]
    for name, extra in (("default", []), ("engine", ["--engine", "local", "--workers", "1"])):
        done = run(*args, *extra, "--out", str(tmp_path / name))
        assert done.returncode == 0, done.stderr
        assert "explain: 3/3" in done.stdout

    def files(out: Path) -> dict[str, bytes]:
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                if p.is_file() and not p.name.startswith(".")}

    assert files(tmp_path / "engine") == files(tmp_path / "default")
    assert "results.json" in files(tmp_path / "default")
