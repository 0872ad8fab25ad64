"""``convlens audit`` on the planted Clever-Hans case: the proof the issue asks for.

The tiny planted model (tests/planted_bias.py) is saved with safetensors and loaded through
``--model tests/planted_bias.py:build --weights ... --labels ...``, as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from planted_bias import TAG_CLASS, planted_case, write_planted_folder
from typer.testing import CliRunner

EVIL = "<img src=x onerror=alert(1)>.png"
HERE = Path(__file__).parents[1]  # tests/, where planted_bias.py lives


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    planted = write_planted_folder(tmp_path_factory.mktemp("planted"), planted_case())
    data, case = planted["data"], planted["case"]
    Image.fromarray(case.images[0]).save(data / "circle" / EVIL)
    (data / "square" / EVIL).write_text("not an image either")
    (data / "circle" / "notimage.png").write_text("this is not a picture")
    (data / "square" / "empty.png").write_bytes(b"")
    good = (data / "triangle" / f"{len(case.images) - 1:04d}-tag.png").read_bytes()
    (data / "triangle" / "truncated.png").write_bytes(good[: len(good) // 2])
    return planted


def cli(*args: str):
    from convlens.cli.app import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def first_run(planted):
    out = planted["root"] / "out"
    result = cli("audit", str(planted["data"]), *planted["model"], "--out", str(out),
                 "--batch-size", "16")
    return out, result


def _audit(out: Path) -> dict:
    return json.loads((out / "audit.json").read_text(encoding="utf-8"))


def test_audit_finds_the_planted_watermark(first_run, planted):
    out, result = first_run
    assert result.exit_code == 1, result.output      # bad files were skipped, the rest done
    data = _audit(out)
    for key in ("model", "method", "layer", "group_by", "images", "errors", "classes",
                "suspicious"):
        assert key in data
    assert data["method"] == "gradcam" and data["group_by"] == "predicted"
    assert data["layer"] == "features"
    images = {i["path"]: i for i in data["images"]}
    assert len(images) == len(planted["case"].images) + 1        # the EVIL file is an image
    assert set(images[f"circle/{EVIL}"]) >= {"label", "predicted", "probability", "correct",
                                             "cluster"}
    # the watermarked images of other classes are among the mistakes, called the tag class
    tagged_others = [i for p, i in images.items()
                     if p.endswith("-tag.png") and i["label"] != TAG_CLASS]
    assert len(tagged_others) == 40
    called = [i for i in tagged_others if i["predicted"] == TAG_CLASS and i["correct"] is False]
    assert len(called) >= 32
    # SpRAy separates the strategies, suspicion ranks the watermark cluster first
    top = data["suspicious"][0]
    assert top["class"] == TAG_CLASS
    group = next(c for c in data["classes"] if c["name"] == TAG_CLASS)
    cluster = group["clusters"][top["cluster"]]
    members = cluster["members"]
    assert sum(m.endswith("-tag.png") for m in members) >= 0.9 * len(members)
    untagged = [p for p, i in images.items()
                if i["predicted"] == TAG_CLASS and not p.endswith("-tag.png")]
    assert untagged and not set(untagged) & set(members)
    assert all(images[m]["cluster"] == top["cluster"] for m in members)
    assert "mistakes" in top["why"]
    # the strategies (convlens 10): the first holds the tagged mistakes, across the classes
    # they came from, and its causal check separates the tag from a random region
    first = data["strategies"][0]
    assert sum(m.endswith("-tag.png") for m in first["members"]) >= 0.9 * len(first["members"])
    assert {i["path"] for i in called} <= set(first["members"])
    assert first["flip_rate"] >= 0.5 and first["random_flip_rate"] <= 0.15
    assert "random" in first["causal"]
    assert [TAG_CLASS, top["cluster"]] in first["clusters"]
    assert cluster["strategy"] == first["id"]
    assert len(group["eigenvalues"]) > 3
    # per-class figures
    square = next(c for c in data["classes"] if c["name"] == "square")
    assert square["support"] == 80 and 0 < square["precision"] < 0.7 and square["recall"] == 1


def test_bad_files_are_listed_with_their_reason(first_run):
    out, result = first_run
    errors = {e["path"]: e["reason"] for e in _audit(out)["errors"]}
    assert set(errors) == {"circle/notimage.png", "square/empty.png", "triangle/truncated.png",
                           f"square/{EVIL}"}
    assert "empty" in errors["square/empty.png"]
    for path in errors:
        assert path in result.output.replace("\n", "")


def test_report_escapes_file_names_and_needs_no_network(first_run):
    out, _ = first_run
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert "<img src=x onerror" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "data:image" not in html
    sources = [part.split('"', 1)[0] for part in html.split('src="')[1:]]
    assert sources and all((out / s).is_file() for s in sources)
    assert html.index("<h2>Strategies</h2>") < html.index("Accuracy") < html.index("Mistakes")


def test_rerun_resumes_without_recomputing(first_run, planted):
    out, _ = first_run
    store = out / "store"
    before = sorted(p.name for p in store.glob("*.jsonl"))
    first = (out / "audit.json").read_text(encoding="utf-8")
    result = cli("audit", str(planted["data"]), *planted["model"], "--out", str(out),
                 "--batch-size", "16")
    assert result.exit_code == 1
    assert sorted(p.name for p in store.glob("*.jsonl")) == before
    assert (out / "audit.json").read_text(encoding="utf-8") == first


def test_a_different_configuration_is_refused_unless_overwrite(planted, tmp_path):
    out = tmp_path / "out"
    args = ["audit", str(planted["data"]), *planted["model"], "--out", str(out)]
    assert cli(*args).exit_code == 1
    refused = cli(*args, "--method", "hirescam")
    assert refused.exit_code == 2
    assert "different configuration" in refused.output and "--overwrite" in refused.output
    assert _audit(out)["method"] == "gradcam"
    replaced = cli(*args, "--method", "hirescam", "--overwrite")
    assert replaced.exit_code == 1
    assert _audit(out)["method"] == "hirescam"


def test_unknown_folders_are_named_with_the_valid_labels(planted, tmp_path):
    data = tmp_path / "data"
    for name in ("circle", "dog", "cat"):
        (data / name).mkdir(parents=True)
        Image.fromarray(planted["case"].images[0]).save(data / name / "a.png")
    result = cli("audit", str(data), *planted["model"], "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "cat, dog" in result.output
    assert "circle, square, triangle" in result.output


def test_plain_folder_gives_predictions_and_strategies_without_accuracy(planted, tmp_path):
    data = tmp_path / "plain"
    data.mkdir()
    for k in range(12):
        Image.fromarray(planted["case"].images[k * 10]).save(data / f"{k}.png")
    out = tmp_path / "out"
    result = cli("audit", str(data), *planted["model"], "--out", str(out))
    assert result.exit_code == 0, result.output
    audit = _audit(out)
    assert audit["accuracy"] is None
    assert all(i["label"] is None and i["correct"] is None for i in audit["images"])
    assert all(i["cluster"] is not None for i in audit["images"])


def test_csv_layout_and_group_by_label(planted, tmp_path):
    data = planted["data"]
    rows = ["path,label"] + [f"{data / 'circle' / '0000.png'},circle",
                             f"{data / 'square' / '0080.png'},square"]
    csv = tmp_path / "list.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = cli("audit", str(csv), *planted["model"], "--out", str(out), "--group-by", "label")
    assert result.exit_code == 0, result.output
    audit = _audit(out)
    assert audit["group_by"] == "label" and len(audit["images"]) == 2


def test_killed_run_resumes_to_the_same_audit(first_run, planted, tmp_path):
    reference, _ = first_run
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "convlens.cli.app", "audit", str(planted["data"]),
               *planted["model"], "--out", str(out), "--batch-size", "16"]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "MPLBACKEND": "Agg"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list((out / "store").glob("*.jsonl"))) < 3:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (out / "audit.json").exists()           # it really died mid-pass
    shards = len(list((out / "store").glob("*.jsonl")))
    assert 3 <= shards < 13
    result = cli("audit", str(planted["data"]), *planted["model"], "--out", str(out),
                 "--batch-size", "16")
    assert result.exit_code == 1
    assert _audit(out) == _audit(reference)


# ------------------------------------------------------------ data that cannot be audited


@pytest.mark.parametrize("make,extra,needles", [
    # an empty folder or CSV is an error, as `convlens explain` says, not "audited 0 images"
    ("empty_folder", [], ["no images found in folder or its sub-folders"]),
    ("empty_csv", [], ["no images found in the CSV"]),
    ("nul_csv", [], ["data.csv: line 3 holds a NUL byte", "UTF-8"]),
    ("twice_csv", [], ["lines 2 and 3 list a.png with different labels ('ant' and 'bee')"]),
    ("plain_folder", ["--group-by", "label"], ["--group-by label", "plain folder",
                                               "group by 'predicted'"]),
    ("unlabelled_csv", ["--group-by", "label"], ["--group-by label", "rows have no label"]),
])
def test_data_that_cannot_be_audited_is_one_line_with_exit_2(tmp_path, make: str,
                                                             extra: list[str],
                                                             needles: list[str]) -> None:
    from cli_support import TINY, assert_one_error, photo, run

    data = tmp_path / "data"
    data.mkdir()
    rows = {"empty_csv": b"path,label\n", "nul_csv": b"path,label\na.png,ant\na\x00.png,ant\n",
            "twice_csv": b"path,label\na.png,ant\na.png,bee\n", "unlabelled_csv": b"path\na.png\n"}
    if make in rows:
        photo(tmp_path / "a.png")
        data = tmp_path / "data.csv"
        data.write_bytes(rows[make])
    elif make == "plain_folder":
        photo(data / "a.png")
    result = run("audit", str(data), *TINY, "--out", str(tmp_path / "out"), *extra)
    assert_one_error(result, 2, *needles)
    assert not (tmp_path / "out" / "audit.json").exists()


def test_group_by_label_on_a_plain_folder_is_refused_before_the_model_loads(tmp_path) -> None:
    from cli_support import assert_one_error, photo, run

    (tmp_path / "plain").mkdir()
    photo(tmp_path / "plain" / "a.png")
    (tmp_path / "boom.py").write_text("def build():\n    raise RuntimeError('model loaded')\n")
    result = run("audit", str(tmp_path / "plain"), "--model", f"{tmp_path / 'boom.py'}:build",
                 "--group-by", "label", "--out", str(tmp_path / "out"))
    assert_one_error(result, 2, "plain folder")


def test_the_library_refuses_an_empty_dataset(tmp_path) -> None:
    from tiny_models import TinyVGG

    import convlens as cl
    from convlens.errors import ConvlensError

    (tmp_path / "empty").mkdir()
    classifier = cl.Classifier(TinyVGG(classes=4).eval(), labels=["a", "b", "c", "d"],
                               input_size=16)
    with pytest.raises(ConvlensError, match="no images found in folder"):
        cl.audit(classifier, tmp_path / "empty", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
