"""``convlens correct`` end to end: audit, correct, and use the corrected folder as --model."""

from __future__ import annotations

import csv
import json

import pytest
from cli_support import assert_one_error, run

planted_bias = pytest.importorskip("planted_bias")


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    return planted_bias.audited_by_cli(tmp_path_factory.mktemp("correct-cli"))


def test_correct_writes_a_folder_every_command_loads(audited, tmp_path) -> None:
    planted, audit = audited
    fixed = tmp_path / "FIXED"
    done = run("correct", str(audit), "--strategy", "1", "--out", str(fixed),
               "--train", str(planted["data"]), *planted["model"])
    assert done.returncode == 0, done.stderr
    with open(fixed / "guidance.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    members = [r for r in rows if r["source"] == "audit"]
    training = [r for r in rows if r["source"] == "training"]
    assert members and members[0]["action"].startswith("relabel")  # mistakes first
    assert all(r["path"].endswith("-tag.png") for r in training[:10])  # the tag, found
    assert "corrected for strategy 1 at features" in done.stdout
    assert "the strategy is gone in the re-audit" in done.stdout, done.stdout
    evidence = json.loads((fixed / "correction.json").read_text())
    assert evidence["accuracy"]["after"] > evidence["accuracy"]["before"]
    card = json.loads((fixed / "card.json").read_text())
    assert card["method"] == "pclarc" and card["strategy"] == 1
    assert (fixed / "projection.safetensors").is_file()
    image = next(planted["data"].rglob("*-tag.png"))
    explained = run("explain", str(image), "--model", str(fixed), "--method", "gradcam,lrp",
                    "--out", str(tmp_path / "explained"), "--device", "cpu")
    assert explained.returncode == 0, explained.stderr
    refused = run("explain", str(image), "--model", str(fixed), "--labels",
                  str(planted["root"] / "labels.txt"), "--out", str(tmp_path / "x"))
    assert_one_error(refused, 2, "is a corrected model: its card fixes")


def test_correct_refuses_what_it_cannot_do_in_one_line(audited, tmp_path) -> None:
    planted, audit = audited
    assert_one_error(run("correct", str(tmp_path), "--out", str(tmp_path / "F"),
                         *planted["model"]), 2, "holds no audit.json")
    assert_one_error(run("correct", str(audit), "--strategy", "99", "--out",
                         str(tmp_path / "G"), *planted["model"]), 2, "no strategy 99")
    assert_one_error(run("correct", str(audit), "--method", "magic", "--out",
                         str(tmp_path / "H"), *planted["model"]), 2, "--method must be one of")


def test_a_correction_killed_midway_resumes_when_run_again(audited, tmp_path) -> None:
    import signal
    import subprocess
    import time

    from cli_support import script

    planted, audit = audited
    fixed = tmp_path / "FIXED"
    command = [*script(), "correct", str(audit), "--method", "rrclarc", "--epochs", "12",
               "--out", str(fixed), *planted["model"]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (fixed / "checkpoint.pt").is_file() and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert (fixed / "checkpoint.pt").is_file(), "no checkpoint was written before the kill"
    assert not (fixed / "card.json").exists()  # killed before it finished
    done = run("correct", str(audit), "--method", "rrclarc", "--epochs", "12", "--out",
               str(fixed), *planted["model"])
    assert done.returncode == 0, done.stderr
    assert "note: resumed from the checkpoint after epoch" in done.stdout, done.stdout
    assert not (fixed / "checkpoint.pt").exists()  # removed once the folder is whole
    card = json.loads((fixed / "card.json").read_text())
    assert card["method"] == "rrclarc" and len(card["training"]["history"]) == 12


def test_last_layer_through_the_cli_writes_trained_weights_that_load(audited, tmp_path) -> None:
    planted, audit = audited
    fixed = tmp_path / "FIXED"
    done = run("correct", str(audit), "--method", "last-layer", "--out", str(fixed),
               *planted["model"])
    assert done.returncode == 0, done.stderr
    assert "(last-layer, map; trained on" in done.stdout
    card = json.loads((fixed / "card.json").read_text())
    assert card["weights"]["keys"] == ["fc.bias", "fc.weight"] and not card["projected"]
    assert (fixed / "weights.safetensors").is_file() and (fixed / "report.html").is_file()
    evidence = json.loads((fixed / "correction.json").read_text())
    assert evidence["accuracy"]["after"] >= evidence["accuracy"]["before"]
    image = next(planted["data"].rglob("*-tag.png"))
    explained = run("explain", str(image), "--model", str(fixed), "--method", "gradcam",
                    "--out", str(tmp_path / "explained"), "--device", "cpu")
    assert explained.returncode == 0, explained.stderr
    assert_one_error(run("correct", str(audit), "--data", str(planted["data"]), "--out",
                         str(tmp_path / "P"), *planted["model"]), 2,
                     "pclarc trains nothing")
