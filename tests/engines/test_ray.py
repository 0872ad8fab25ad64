"""The Ray engine on a local Ray instance (2 CPUs): the same audit.json and evaluation as
the local engine, resuming across engines, errors from workers, and the CLI.

Skipped with a message when Ray is not installed; CI installs it (``convlens[ray]`` is in the
dev extras) and sets CONVLENS_REQUIRE_RAY=1, which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from planted_bias import planted_classifier, planted_folder_with_a_broken_file
from typer.testing import CliRunner

import convlens as cl

if os.environ.get("CONVLENS_REQUIRE_RAY") != "1":
    pytest.importorskip("ray.data", reason="Ray is not installed: pip install 'convlens[ray]'")

pytestmark = pytest.mark.xdist_group("ray")  # one Ray instance per test process


@pytest.fixture(scope="module")
def ray_session():
    import ray

    if ray.is_initialized():  # started by something else in this test process
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=120 * 1024 * 1024, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_folder_with_a_broken_file(tmp_path_factory.mktemp("ray"), every=3)


@pytest.fixture(scope="module")
def classifier(planted):
    return planted_classifier(planted)


def _text(out):
    return (out / "audit.json").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def both(planted, classifier, ray_session):
    root = planted["root"]
    local = cl.audit(classifier, planted["data"], out=root / "local", batch_size=8,
                     metrics="deletion")
    events = []
    ray_run = cl.audit(classifier, planted["data"], out=root / "ray", batch_size=8,
                       metrics="deletion", engine="ray", engine_options={"actors": 2},
                       progress=events.append)
    return local, ray_run, events


def test_ray_audit_json_equals_the_local_one(both):
    local, ray_run, events = both
    assert _text(ray_run.out) == _text(local.out)
    assert len(ray_run.images) == len(local.images) > 50
    assert [e["path"] for e in ray_run.errors] == ["circle/broken.png"]
    assert ray_run.suspicious[0]["class"] == "square"       # the planted tag still ranks first
    audit_events = [e for e in events if e.stage == "audit"]
    assert audit_events[-1].done == audit_events[-1].total == len(local.images) + 1
    store_files = sorted(p.name for p in (ray_run.out / "store").iterdir())
    assert store_files == sorted(p.name for p in (local.out / "store").iterdir())


def test_ray_resumes_a_local_run_and_computes_only_new_images(both, planted, classifier):
    local, _, _ = both
    out = planted["root"] / "resumed"
    shutil.copytree(local.out, out)
    extra = planted["data"] / "square" / "9999-copy.png"
    shutil.copy(next((planted["data"] / "square").glob("*.png")), extra)
    try:
        events = []
        cl.audit(classifier, planted["data"], out=out, batch_size=8, metrics="deletion",
                 engine="ray", engine_options={"actors": 1}, progress=events.append)
        last = [e for e in events if e.stage == "audit"][-1]
        assert last.message.startswith("1 computed")
        reference = cl.audit(classifier, planted["data"], out=planted["root"] / "fresh",
                             batch_size=8, metrics="deletion")
        assert _text(out) == _text(reference.out)
    finally:
        extra.unlink()


def test_ray_evaluate_equals_local(planted, classifier, ray_session):
    files = [str(planted["data"] / "square"), str(planted["data"] / "circle")]
    kwargs = dict(methods=["gradcam", "saliency"], metrics=["deletion", "sparseness"],
                  image_batch=6, bootstrap=200)
    local = cl.evaluate(classifier, files, engine="local", **kwargs)
    ray_run = cl.evaluate(classifier, files, engine="ray", engine_options={"actors": 2},
                          **kwargs)
    assert ray_run.to_json() == local.to_json()
    assert len(local.images) > 20 and [e["reason"] for e in local.errors] == [
        "not a recognised image format; expected a JPEG, PNG, BMP, GIF, TIFF or WebP file"]


def test_an_error_in_a_worker_reaches_the_caller_as_itself(planted, classifier, ray_session):
    with pytest.raises(cl.ConvlensError, match="dog"):
        cl.evaluate(classifier, [str(planted["data"] / "square")], ["saliency"], ["deletion"],
                    target="dog", engine="ray", engine_options={"actors": 1})


def test_cli_audit_on_ray_matches_the_local_cli(planted, ray_session):
    from convlens.cli.app import app

    runner = CliRunner()
    outs = {}
    for engine in ("local", "ray"):
        out = planted["root"] / f"cli-{engine}"
        result = runner.invoke(app, ["audit", str(planted["data"]), *planted["model"], "--out",
                                     str(out), "--batch-size", "8", "--engine", engine,
                                     *(["--actors", "2"] if engine == "ray" else [])],
                               catch_exceptions=False)
        assert result.exit_code == 1, result.output  # broken.png recorded, the rest done
        assert "broken.png" in result.output
        outs[engine] = json.loads(_text(out))
    assert outs["ray"] == outs["local"]


def test_ray_explain_job_writes_the_default_runs_files(planted, classifier, ray_session,
                                                       tmp_path):
    """``ExplainJob`` (``convlens explain``) on Ray, units out of order across 2 actors,
    writes byte for byte the files of the default run, the broken file recorded; a rerun on
    Ray skips every photo."""
    from convlens.jobs.explain_job import ExplainJob

    folder = tmp_path / "in"
    folder.mkdir()
    for path in [*sorted((planted["data"] / "circle").glob("0*.png"))[:6],
                 planted["data"] / "circle" / "broken.png"]:
        shutil.copy(path, folder / path.name)

    def files(out):
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                if p.is_file() and not p.name.startswith(".")}

    written = {}
    for name, engine in (("default", {}),
                         ("ray", {"engine": "ray", "engine_options": {"actors": 2}})):
        job = ExplainJob(classifier, ["gradcam", "saliency"], tmp_path / name, batch_size=2,
                         grids=False, **engine)
        outcome = job.run([folder])
        assert (outcome.new, len(outcome.problems)) == (6, 1)
        written[name] = files(tmp_path / name)
    assert written["ray"] == written["default"]
    again = ExplainJob(classifier, ["gradcam", "saliency"], tmp_path / "ray", batch_size=2,
                       grids=False, engine="ray", engine_options={"actors": 1}).run([folder])
    assert (again.new, again.skipped) == (0, 6)
