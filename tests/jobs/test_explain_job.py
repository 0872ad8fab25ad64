"""ExplainJob through its API: resuming, one scale per run, bounded batches, kill safety."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TinyVGG, seeded

import convlens.explanations as explain_module
from convlens.errors import StoreMismatchError
from convlens.jobs.explain_job import ExplainJob, group_methods
from convlens.models.classifier import Classifier
from convlens.progress import ProgressEvent
from convlens.store import OUTPUT_MARKER, ResultStore

LABELS = ["ant", "bee", "cat", "dog"]


def classifier() -> Classifier:
    return Classifier(seeded(TinyVGG(classes=4), dtype=torch.float32), LABELS, input_size=32,
                      device="cpu", name="tiny")


def photos(folder: Path, count: int, prefix: str = "p") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        # different contrast per photo, so each has its own peak
        pixels = (rng.random((36 + i, 44, 3)) * (40 + 20 * i)).clip(0, 255).astype(np.uint8)
        path = folder / f"{prefix}{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def pngs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}


def test_rerun_skips_finished_photos_and_rewrites_nothing(tmp_path: Path) -> None:
    photos(tmp_path / "in", 5)
    out = tmp_path / "out"
    first = ExplainJob(classifier(), ["gradcam"], out, batch_size=2).run([tmp_path / "in"])
    assert (first.records, first.new, first.skipped) == (5, 5, 0)
    shards = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.jsonl")}
    images = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    before = results(out)["images"]
    time.sleep(0.01)
    second = ExplainJob(classifier(), ["gradcam"], out, batch_size=3).run([tmp_path / "in"])
    assert (second.records, second.new, second.skipped) == (5, 0, 5)
    assert results(out)["images"] == before
    assert {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.jsonl")} == shards
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == images
    photos(tmp_path / "in", 1, prefix="new")
    third = ExplainJob(classifier(), ["gradcam"], out, batch_size=3).run([tmp_path / "in"])
    assert (third.records, third.new) == (6, 1)
    assert (out / OUTPUT_MARKER).is_file()


def test_batch_normalisation_is_one_scale_per_run_whatever_the_batch_size(tmp_path: Path
                                                                          ) -> None:
    photos(tmp_path / "in", 10)
    got = {}
    for size in (1, 3, 10):
        out = tmp_path / f"out{size}"
        ExplainJob(classifier(), ["gradcam", "saliency"], out, normalize="batch",
                   batch_size=size).run([tmp_path / "in"])
        records = results(out)["images"]
        got[size] = ([r["scales"] for r in records], pngs(out))
        for method in ("gradcam", "saliency"):
            peaks = [r["peaks"][method] for r in records]
            assert len(set(peaks)) > 1  # the photos do differ
            assert {r["scales"][method] for r in records} == {max(peaks)}
    # The same scales and pictures; only float32 rounding of batched convolutions differs
    # (before the fix, saliency's scale differed by up to the ratio of the photos' peaks).
    for size in (3, 10):
        for mine, reference in zip(got[size][0], got[1][0]):
            assert mine == pytest.approx(reference, rel=1e-5)
        assert got[size][1].keys() == got[1][1].keys()
        for name, data in got[size][1].items():
            if name.endswith(".grid.png"):  # colour-bar labels are drawn from the scale
                continue
            difference = np.abs(_pixels(data) - _pixels(got[1][1][name]))
            assert (difference > 1).mean() < 0.01, name  # a colour-map step at most, rarely


def _pixels(data: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_batch_scale_matches_explain_over_all_photos_at_once(tmp_path: Path) -> None:
    paths = photos(tmp_path / "in", 4)
    out = tmp_path / "out"
    ExplainJob(classifier(), ["gradcam"], out, normalize="batch", batch_size=1).run(paths)
    reference = explain_module.explain(classifier(), [str(p) for p in paths], ["gradcam"],
                                       normalize="batch")
    expected = reference[0].scales["gradcam"]
    assert [r["scales"]["gradcam"] for r in results(out)["images"]] == pytest.approx(
        [expected] * 4, rel=1e-6)


def test_image_normalisation_matches_explanation_pictures(tmp_path: Path) -> None:
    paths = photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    ExplainJob(classifier(), ["gradcam"], out).run(paths)
    for path, exp in zip(paths, explain_module.explain(classifier(), [str(p) for p in paths],
                                                      ["gradcam"])):
        written = np.asarray(Image.open(out / f"{path.stem}.gradcam.png"))
        assert np.array_equal(written, np.asarray(exp.overlay("gradcam")))


def test_memory_is_bounded_by_the_batch_size(tmp_path: Path, monkeypatch) -> None:
    photos(tmp_path / "in", 11)
    calls = []
    original = explain_module.explain

    def spy(clf, images, *args, **kwargs):
        calls.append(len(images))
        return original(clf, images, *args, **kwargs)

    monkeypatch.setattr(explain_module, "explain", spy)
    events: list[ProgressEvent] = []
    ExplainJob(classifier(), ["gradcam"], tmp_path / "out", batch_size=4).run(
        [tmp_path / "in"], progress=events.append)
    assert calls == [4, 4, 3]
    assert [(e.done, e.total) for e in events if e.stage == "explain"] == [
        (0, 11), (4, 11), (8, 11), (11, 11)]


def test_methods_with_different_options_get_separate_calls(tmp_path: Path, monkeypatch
                                                           ) -> None:
    assert group_methods(["gradcam", "saliency", "integrated_gradients", "layercam"],
                         {"integrated_gradients": {"steps": 3}}) == [
        (["gradcam", "saliency", "layercam"], {}), (["integrated_gradients"], {"steps": 3})]
    paths = photos(tmp_path / "in", 2)
    calls = []
    original = explain_module.explain

    def spy(clf, images, methods, **kwargs):
        calls.append((list(methods), (kwargs.get("method_options") or {}).get("steps")))
        return original(clf, images, methods, **kwargs)

    monkeypatch.setattr(explain_module, "explain", spy)
    out = tmp_path / "out"
    ExplainJob(classifier(), ["saliency", "integrated_gradients"], out,
               options={"integrated_gradients": {"steps": 3}}).run(paths)
    assert calls == [(["saliency"], None), (["integrated_gradients"], 3)]
    records = results(out)["images"]
    reference = original(classifier(), [str(p) for p in paths], ["integrated_gradients"],
                         steps=3)
    assert [r["peaks"]["integrated_gradients"] for r in records] == pytest.approx(
        [e.scales["integrated_gradients"] for e in reference])
    assert results(out)["options"] == {"integrated_gradients": {"steps": 3}}


def test_top_k_writes_one_grid_per_image_with_every_class(tmp_path: Path) -> None:
    paths = photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    ExplainJob(classifier(), ["gradcam"], out, target="top:3").run(paths)
    records = results(out)["images"]
    assert len(records) == 6
    grids = sorted({r["files"]["grid"] for r in records})
    assert grids == ["p00.grid.png", "p01.grid.png"]
    single = tmp_path / "single"
    ExplainJob(classifier(), ["gradcam"], single).run(paths[:1])
    one_row = Image.open(single / "p00.grid.png").height
    assert Image.open(out / "p00.grid.png").height == 3 * one_row
    assert len({r["files"]["gradcam"] for r in records}) == 6
    empty = [r for r in records if r["empty_maps"]]
    assert all(any("all zero" in n for n in r["notes"]) for r in empty)


def test_another_configuration_is_refused_until_overwrite(tmp_path: Path) -> None:
    paths = photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    ExplainJob(classifier(), ["gradcam", "saliency"], out).run(paths)
    with pytest.raises(StoreMismatchError, match=r"methods: .*--overwrite"):
        ExplainJob(classifier(), ["gradcam"], out).run(paths)
    ExplainJob(classifier(), ["gradcam"], out, overwrite=True).run(paths)
    assert not list(out.glob("*.saliency.png"))  # the old run's files are gone
    assert len(results(out)["images"]) == 2


def test_files_have_normal_permissions_and_unicode_names(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        folder = tmp_path / "in"
        photos(folder, 1)
        os.rename(folder / "p00.png", folder / "猫 café.png")
        out = tmp_path / "out"
        ExplainJob(classifier(), ["gradcam"], out).run([folder])
    finally:
        os.umask(old)
    assert (out / "猫_café.gradcam.png").is_file()
    for path in [out / "results.json", *out.glob("*.png"), *(out / "records").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_broken_links_and_bad_files_are_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    photos(folder, 1)
    os.symlink(folder / "gone.png", folder / "link.png")
    (folder / "bad.png").write_bytes(b"nope")
    outcome = ExplainJob(classifier(), ["gradcam"], tmp_path / "out").run([folder])
    errors = {Path(e["path"]).name: e["error"] for e in results(tmp_path / "out")["errors"]}
    assert "broken symbolic link" in errors["link.png"]
    assert "not a recognised image format" in errors["bad.png"]
    assert len(outcome.problems) == 2 and outcome.records == 1


def test_store_records_are_what_results_json_lists(tmp_path: Path) -> None:
    photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    ExplainJob(classifier(), ["gradcam"], out, batch_size=2).run([tmp_path / "in"])
    summary = results(out)
    assert summary["shards"] == ["records/000001.jsonl", "records/000002.jsonl"]
    stored = list(ResultStore.open(out / "records").records())
    assert [r["key"] for r in stored] == [r["key"] for r in summary["images"]]
    assert set(stored[0]) >= {"path", "name", "predictions", "target", "empty_maps", "scales",
                              "files", "key", "relpath", "digest", "peaks", "geometry"}


_KILL_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from tiny_models import TinyVGG, seeded
from convlens.models.classifier import Classifier
from convlens.jobs.explain_job import ExplainJob
clf = Classifier(seeded(TinyVGG(classes=4), dtype=torch.float32), ["ant", "bee", "cat", "dog"],
                 input_size=32, device="cpu", name="tiny")
ExplainJob(clf, ["gradcam", "saliency"], sys.argv[2], normalize=sys.argv[3],
           batch_size=2, page=False).run([sys.argv[1]])
"""


def _run_script(tmp_path: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "job.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(Path(__file__).parents[1])))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, str(script), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("normalize", ["image", "batch"])
def test_killed_run_resumed_ends_like_an_uninterrupted_one(tmp_path: Path, normalize: str
                                                           ) -> None:
    folder = tmp_path / "in"
    photos(folder, 12)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _run_script(tmp_path, str(folder), str(whole), normalize).wait(300) == 0
    # kill -9 as soon as the second shard is on disk: mid-batch, with PNGs half done
    process = _run_script(tmp_path, str(folder), str(killed), normalize)
    deadline = time.monotonic() + 300
    while not (killed / "records" / "000002.jsonl").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    was_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait(60)
    assert was_running, "the run ended before it could be killed"
    assert not (killed / "results.json").exists()
    resumed = _run_script(tmp_path, str(folder), str(killed), normalize)
    assert resumed.wait(300) == 0, resumed.stderr.read().decode()
    assert results(killed)["images"] == results(whole)["images"]
    assert pngs(killed) == pngs(whole)
    leftovers = [p.name for p in [*killed.iterdir(), *(killed / "records").iterdir()]
                 if "convlens-tmp" in p.name]
    assert leftovers == []


def test_without_grids_only_overlays_are_written(tmp_path: Path) -> None:
    paths = photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    ExplainJob(classifier(), ["gradcam"], out, grids=False).run(paths)
    assert sorted(p.name for p in out.glob("*.png")) == ["p00.gradcam.png", "p01.gradcam.png"]
    assert all("grid" not in r["files"] for r in results(out)["images"])


def test_photo_gone_before_pass_two_is_a_problem(tmp_path: Path, monkeypatch) -> None:
    paths = photos(tmp_path / "in", 2)
    job = ExplainJob(classifier(), ["gradcam"], tmp_path / "out", normalize="batch")
    original = job._render_all

    def delete_then_render(store, progress):
        paths[0].unlink()
        return original(store, progress)

    monkeypatch.setattr(job, "_render_all", delete_then_render)
    outcome = job.run(paths)
    assert [Path(p["path"]).name for p in outcome.problems] == ["p00.png"]
    assert "cannot draw its maps" in outcome.problems[0]["error"]
    assert (tmp_path / "out" / "p01.gradcam.png").is_file()



def test_photo_gone_before_its_drawing_is_a_problem_and_explained_on_a_rerun(
        tmp_path: Path, monkeypatch) -> None:
    """normalize="image": the engine decodes and explains, this process decodes the photo
    again to draw on it; a photo deleted in between is one problem, not a crash, and gets no
    record, so the rerun (photo restored) explains it like the others."""
    paths = photos(tmp_path / "in", 3)
    kept = paths[1].read_bytes()
    job = ExplainJob(classifier(), ["gradcam"], tmp_path / "out", batch_size=2)
    original = job._store_batch

    def delete_then_store(unit, names):
        if paths[1].exists():
            paths[1].unlink()
        return original(unit, names)

    monkeypatch.setattr(job, "_store_batch", delete_then_store)
    outcome = job.run(paths)
    assert [Path(p["path"]).name for p in outcome.problems] == ["p01.png"]
    assert "cannot draw its maps" in outcome.problems[0]["error"]
    assert outcome.records == 2 and (tmp_path / "out" / "p02.gradcam.png").is_file()
    assert not (tmp_path / "out" / "p01.gradcam.png").exists()

    paths[1].write_bytes(kept)
    again = ExplainJob(classifier(), ["gradcam"], tmp_path / "out", batch_size=2,
                       overwrite=False).run(paths)
    assert again.problems == [] and again.new == 1 and again.skipped == 2
    assert (tmp_path / "out" / "p01.gradcam.png").is_file()

def folder_files(out: Path) -> dict[str, bytes]:
    """Every file the job wrote (records, PNGs, results.json, the page), by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


class LastFirstEngine:
    """The local engine's units, yielded last first: engines may yield in any order."""

    name = "last_first"

    def map_units(self, entries, preprocessing, factory, **options):
        from convlens.engines.local import LocalEngine

        yield from reversed(list(LocalEngine().map_units(entries, preprocessing, factory,
                                                         **options)))


@pytest.mark.parametrize(("normalize", "target"), [("image", None), ("batch", "top:2")])
def test_an_engine_runs_the_job_and_writes_the_same_files(tmp_path: Path, normalize: str,
                                                          target: str | None) -> None:
    """ExplainJob on an engine (by name with its options, or an engine object yielding units
    out of order) writes byte for byte what the default run writes, bad files included."""
    folder = tmp_path / "in"
    photos(folder, 5)
    (folder / "bad.png").write_bytes(b"nope")
    runs = {"default": {}, "local": {"engine": "local", "engine_options": {"workers": 1}},
            "object": {"engine": LastFirstEngine()}}
    written = {}
    for name, engine in runs.items():
        job = ExplainJob(classifier(), ["gradcam", "saliency"], tmp_path / name, batch_size=2,
                         normalize=normalize, target=target, **engine)
        outcome = job.run([folder])
        assert (outcome.new, outcome.skipped, len(outcome.problems)) == (
            outcome.records, 0, 1)
        written[name] = folder_files(tmp_path / name)
    assert "results.json" in written["default"] and "records/000003.jsonl" in written["default"]
    assert written["local"] == written["default"]
    assert written["object"] == written["default"]


def test_a_run_resumes_on_another_engine_as_on_the_default_one(tmp_path: Path) -> None:
    """A folder started by a default run and resumed on another engine ends with the files
    of the same two runs on the default engine: the finished photos are skipped."""
    folder = tmp_path / "in"
    photos(folder, 3)
    for name in ("default", "object"):
        ExplainJob(classifier(), ["gradcam"], tmp_path / name, batch_size=2).run([folder])
    photos(folder, 2, prefix="q")
    outcomes = {name: ExplainJob(classifier(), ["gradcam"], tmp_path / name, batch_size=2,
                                 **engine).run([folder])
                for name, engine in (("default", {}), ("object", {"engine": LastFirstEngine()}))}
    assert [(o.records, o.new, o.skipped) for o in outcomes.values()] == [(5, 2, 3)] * 2
    assert folder_files(tmp_path / "object") == folder_files(tmp_path / "default")


def test_an_unknown_engine_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from convlens.errors import EngineError

    with pytest.raises(EngineError, match="unknown engine 'spark'.*local"):
        ExplainJob(classifier(), ["gradcam"], tmp_path / "out", engine="spark")
    with pytest.raises(EngineError, match="LocalEngine"):
        ExplainJob(classifier(), ["gradcam"], tmp_path / "out", engine_options={"actors": 2})
    assert not (tmp_path / "out").exists()
