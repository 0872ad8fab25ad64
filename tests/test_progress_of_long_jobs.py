"""Every long job reports progress one way (issue 19 item 3, docs/architecture.md, "Progress").

Each public long job takes ``progress: ProgressCallback | bool | None``, read by
:func:`convlens.progress.resolve_progress`: given a recording callback it receives
:class:`~convlens.progress.ProgressEvent` s whose ``done`` never falls within a stage and whose
last event per stage has ``done == total``; ``True`` prints plain lines (no notebook here);
anything else is one clear :class:`~convlens.errors.ConvlensError` before any work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import TINY, run
from PIL import Image
from torch import nn

import convlens as cl
from convlens.concepts.atlas import write_atlas
from convlens.errors import ProgressError
from convlens.jobs import demo as demo_job
from convlens.jobs.explain_job import ExplainJob
from convlens.progress import ProgressEvent

CLASSES = ["ant", "bee", "cat", "dog"]
COLOURS = {"ant": (230, 20, 20), "bee": (20, 230, 20), "cat": (20, 20, 230), "dog": (20, 20, 20)}
LAYER = "features.0"


class ColourNet(nn.Module):
    """Predicts by colour: red ant, green bee, blue cat, dark dog (hand-set weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
        with torch.no_grad():
            self.features[0].weight.zero_()
            for channel in range(3):
                self.features[0].weight[channel, channel, 1, 1] = 1.0
            self.features[0].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.25]))
            self.classifier[1].weight.copy_(4 * torch.eye(4))
            self.classifier[1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def _classifier() -> cl.Classifier:
    return cl.Classifier(ColourNet(), labels=CLASSES, input_size=32, mean=(0, 0, 0),
                         std=(1, 1, 1), device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """An ImageFolder of 13 small noisy photos: three of each class's colour, and one green
    ant, which the model calls a bee (a strategy mixing two labels, for ``correct``)."""
    root = tmp_path_factory.mktemp("progress") / "data"
    rng = np.random.default_rng(7)
    pictures = [(CLASSES[k % 4], COLOURS[CLASSES[k % 4]]) for k in range(12)]
    for k, (label, colour) in enumerate([*pictures, ("ant", COLOURS["bee"])]):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(-20, 20, (40, 36, 3))
        array = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(array).save(folder / f"{k:02d}.png")
    return root


@pytest.fixture(scope="module")
def audited(photos, tmp_path_factory):
    events: list[ProgressEvent] = []
    audit = cl.audit(_classifier(), photos, out=tmp_path_factory.mktemp("audit") / "out",
                     batch_size=5, progress=events.append)
    return audit, events


def _stages(events: list) -> dict[str, list[ProgressEvent]]:
    """The events by stage, checked: ``done`` never falls, the last one is ``total``."""
    by_stage: dict[str, list[ProgressEvent]] = {}
    for event in events:
        assert isinstance(event, ProgressEvent), event
        by_stage.setdefault(event.stage, []).append(event)
    for stage, seen in by_stage.items():
        dones = [e.done for e in seen]
        assert dones == sorted(dones), (stage, dones)
        assert seen[-1].total is not None and seen[-1].done == seen[-1].total, (stage, seen[-1])
    return by_stage


def _files(photos: Path) -> list[str]:
    return sorted(str(p) for p in photos.rglob("*.png"))


def test_explain(photos) -> None:
    events: list[ProgressEvent] = []
    cl.explain(_classifier(), _files(photos), ["saliency"], batch_size=5, progress=events.append)
    assert [(e.done, e.total) for e in _stages(events)["explain"]] == [
        (0, 13), (5, 13), (10, 13), (13, 13)]


def test_the_explain_job(photos, tmp_path) -> None:
    events: list[ProgressEvent] = []
    ExplainJob(_classifier(), ["gradcam"], tmp_path / "out", batch_size=5).run(
        [photos], progress=events.append)
    assert [(e.done, e.total) for e in _stages(events)["explain"]] == [
        (0, 13), (5, 13), (10, 13), (13, 13)]


def test_the_audit_and_its_report(audited) -> None:
    audit, events = audited
    stages = _stages(events)
    assert [e.done for e in stages["audit"]] == [0, 5, 10, 13]
    assert {"audit", "cluster", "done"} <= set(stages)
    report: list[ProgressEvent] = []
    audit.report(progress=report.append)
    assert set(_stages(report)) == {"report"} and report[-1].message.startswith("wrote ")


@pytest.mark.parametrize("engine", [None, "local"])
def test_evaluate(photos, engine) -> None:
    events: list[ProgressEvent] = []
    cl.evaluate(_classifier(), _files(photos), ["saliency"], ["sparseness"], image_batch=5,
                bootstrap=0, engine=engine, progress=events.append)
    seen = _stages(events)["evaluate"]
    assert [e.done for e in seen] == [0, 5, 10, 13] and seen[-1].total == 13
    assert "saliency / sparseness: mean " in seen[-1].message


def test_visualize_and_a_run_stopped_early() -> None:
    events: list[ProgressEvent] = []
    cl.visualize(_classifier(), "features.0:0", size=16, steps=4, progress=events.append)
    assert _stages(events)["visualize"][-1].done == 4
    events.clear()
    cl.visualize(_classifier(), "features.0:0", size=16, steps=50, time_limit=0,
                 progress=events.append)
    last = _stages(events)["visualize"][-1]
    assert last.done < 50 and "stopped early" in last.message


def test_the_demo_emits_events_and_draws_nothing(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr("convlens.models.loading.load_model", lambda device="auto": _classifier())
    events: list[ProgressEvent] = []
    demo_job.build_demo(tmp_path / "demo", methods=["saliency", "gradcam"], features=False,
                        progress=events.append)
    seen = _stages(events)["explain"]
    assert [(e.done, e.total, e.message) for e in seen[:2]] == [(0, 2, "saliency"),
                                                                (1, 2, "gradcam")]
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(("method", "stages"), [("last-layer", {"features", "fit"}),
                                                ("rrclarc", {"train"})])
def test_correct(audited, method, stages) -> None:
    audit, _ = audited
    mixed = next(s["id"] for s in audit.data["strategies"]
                 if len({member.split("/")[0] for member in s["members"]}) > 1)
    events: list[ProgressEvent] = []
    cl.correct(_classifier(), audit, mixed, method=method, epochs=1, progress=events.append)
    assert set(_stages(events)) == stages


def test_reference_sets_and_their_atlas(photos, tmp_path) -> None:
    events: list[ProgressEvent] = []
    sets = cl.reference_sets(_classifier(), photos, LAYER, k=2, out=tmp_path / "refs",
                             batch_size=5, progress=events.append)
    assert [e.done for e in _stages(events)["references"]] == [0, 5, 10, 13]
    events.clear()
    write_atlas(sets, channels=[0, 1], progress=events.append)
    assert set(_stages(events)) == {"atlas"}


def test_tcav(photos) -> None:
    events: list[ProgressEvent] = []
    cl.tcav(_classifier(), sorted((photos / "ant").glob("*.png")), LAYER, images=photos,
            runs=2, progress=events.append)
    assert [e.done for e in _stages(events)["tcav"]] == [0, 1, 2, 3, 4]


def test_true_prints_plain_lines_outside_a_notebook(photos, capsys) -> None:
    cl.evaluate(_classifier(), _files(photos), ["saliency"], ["sparseness"], image_batch=13,
                bootstrap=0, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "evaluate: 0/13" and lines[-1].startswith("evaluate: 13/13 saliency")


@pytest.mark.parametrize("job", ["explain", "explain job", "audit", "evaluate", "visualize", "demo",
                                 "correct", "reference_sets", "tcav"])
def test_a_bad_progress_value_is_one_clear_error(job, photos, audited, tmp_path,
                                                 monkeypatch) -> None:
    monkeypatch.setattr("convlens.models.loading.load_model", lambda device="auto": _classifier())
    clf, bad = _classifier(), "yes"
    calls = {
        "explain": lambda: cl.explain(clf, _files(photos), progress=bad),
        "explain job": lambda: ExplainJob(clf, ["gradcam"], tmp_path / "o").run(
            [photos], progress=bad),
        "audit": lambda: cl.audit(clf, photos, out=tmp_path / "o", progress=bad),
        "evaluate": lambda: cl.evaluate(clf, _files(photos), progress=bad),
        "visualize": lambda: cl.visualize(clf, "features.0:0", size=16, steps=2, progress=bad),
        "demo": lambda: demo_job.build_demo(tmp_path / "o", progress=bad),
        "correct": lambda: cl.correct(clf, audited[0], 1, progress=bad),
        "reference_sets": lambda: cl.reference_sets(clf, photos, out=tmp_path / "o",
                                                    progress=bad),
        "tcav": lambda: cl.tcav(clf, _files(photos)[:3], images=photos, progress=bad),
    }
    with pytest.raises(ProgressError) as caught:
        calls[job]()
    assert isinstance(caught.value, cl.ConvlensError)
    assert str(caught.value) == (
        "progress must be None or False (silent), True (text lines, or bars in a notebook) or "
        "a callable taking a ProgressEvent, got str 'yes'; pass one of those")
    assert not (tmp_path / "o").exists()  # refused before any work


def test_cli_evaluate_in_a_log_prints_a_few_progress_lines(photos) -> None:
    result = run("evaluate", str(photos), "--method", "saliency", "--metric", "sparseness",
                 "--image-batch", "5", "--bootstrap", "0", *TINY)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("evaluate: ")]
    assert lines[0] == "evaluate: 0/13" and lines[-1].startswith("evaluate: 13/13 saliency")
    assert "sparseness (higher is better)" in result.stdout
