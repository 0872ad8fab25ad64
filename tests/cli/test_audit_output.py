"""What `convlens audit` prints: true sentences, whole lines, a few progress lines in a log
(convlens 10, the smaller defects)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from cli_support import TINY, photo, run

from convlens.auditing.suspicion import ClusterScore
from convlens.progress import ProgressEvent, text_progress


def test_install_hints_in_audit_help_keep_their_extras() -> None:
    result = run("audit", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "pip install 'convlens[scale]'" in text and "pip install 'convlens[ray]'" in text
    assert "\\[" not in text


def test_the_why_of_a_groups_only_cluster_does_not_speak_of_the_rest() -> None:
    alone = ClusterScore("ant", 0, 6, 0.5, 0.2, 0.0, 0.55, 0.3, 0.4, alone=True)
    assert "rest of its group" not in alone.why()
    assert "50% of its 6 members are mistakes" in alone.why()
    paired = ClusterScore("ant", 0, 6, 0.5, 0.2, 0.25, 0.55, 0.3, 0.4)
    assert "overlaps the rest of its group by 75%" in paired.why()


def test_a_long_stage_prints_a_few_lines_in_a_log() -> None:
    stream = io.StringIO()
    callback = text_progress(stream, every=0.1)
    for done in range(136):
        callback(ProgressEvent("cluster", done, 135, f"class {done}"))
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 12, lines
    assert lines[0] == "cluster: 0/135 class 0" and lines[-1].startswith("cluster: 135/135")
    every = io.StringIO()
    unthrottled = text_progress(every)
    for done in range(136):
        unthrottled(ProgressEvent("cluster", done, 135))
    assert len(every.getvalue().splitlines()) == 136


def test_audit_output_in_a_log_is_whole_lines_and_few(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for label in ("ant", "bee", "cat", "dog"):
        (data / label).mkdir(parents=True)
        for k in range(3):
            photo(data / label / f"{label}{k}.png", size=(40 + k, 32 + 2 * k))
    out = tmp_path / "out"
    result = run("audit", str(data), "--out", str(out), *TINY, COLUMNS="80")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    suspicious = [line for line in lines if line.startswith("most suspicious:")]
    top = json.loads((out / "audit.json").read_text())["strategies"][0]
    expected = f"most suspicious: strategy {top['id']}: {top['why']}"
    if top["causal"]:
        expected += f"; {top['causal']}"
    assert suspicious == [expected]  # one line, not wrapped at 80 columns
    assert len(lines) < 30, lines
