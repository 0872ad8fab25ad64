"""``evaluate --option`` / ``audit --metric-option METRIC.NAME=VALUE``: checked against the
metric registry as ``--option`` is against the method registry (tests/cli/test_options.py),
before images are read or the model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import TINY, assert_one_error, photo, run

from convlens.cli.evaluate import parse_options
from convlens.metrics import get_metric
from convlens.metrics.core import MetricError

DELETION = ", ".join(f"{k}={v!r}" for k, v in get_metric("deletion").options.items())


def evaluate(tmp_path: Path, *args: str) -> str:
    return run("evaluate", str(photo(tmp_path / "a.png")), "--method", "saliency", *args, *TINY)


@pytest.mark.parametrize("args,needles", [
    # a metric that exists but is not measured in this run
    (["--metric", "deletion", "--option", "insertion.step=3"],
     ["--option 'insertion.step=3': metric 'insertion' is not among the metrics of this run "
      "(deletion); add it to --metric or drop the option"]),
    # a metric the registry does not know
    (["--metric", "deletion", "--option", "delition.step=3"],
     ["--option 'delition.step=3': unknown metric 'delition'; valid metrics: deletion",
      "did you mean 'deletion'?"]),
    # an option the metric lacks: did-you-mean and every option with its default
    (["--metric", "deletion", "--option", "deletion.stpe=3"],
     ["--option 'deletion.stpe=3': metric 'deletion' has no option 'stpe'; did you mean "
      "'step' or 'steps'?; its options are: " + DELETION]),
    # the defaults listed are the preset's
    (["--metric", "deletion:xplique", "--option", "deletion:xplique.stpe=3"],
     ["metric 'deletion:xplique' has no option 'stpe'", "step=None, steps=10"]),
    # a value of the wrong type, judged by the metric's signature (step: int | None)
    (["--metric", "deletion", "--option", "deletion.step=many"],
     ["--option 'deletion.step=many': deletion.step takes an int or None (default 224), got "
      "'many'; its options are: " + DELETION]),
    (["--metric", "road", "--option", "road.percentages=10"],
     ["road.percentages takes a list of float", "got 10"]),
    (["--metric", "deletion", "--option", "step=3"],
     ["--option takes METRIC.NAME=VALUE, e.g. deletion.step=112; got 'step=3'"]),
])
def test_bad_metric_options_are_one_line(tmp_path: Path, args: list[str], needles: list[str]
                                         ) -> None:
    assert_one_error(evaluate(tmp_path, *args), 2, *needles)


def test_metric_options_are_checked_before_the_model_loads(tmp_path: Path) -> None:
    result = run("evaluate", str(photo(tmp_path / "a.png")), "--metric", "deletion",
                 "--option", "deletion.stpe=3", "--model", str(tmp_path / "missing.pt"))
    assert_one_error(result, 2, "has no option 'stpe'")


def test_method_option_errors_name_the_flag_evaluate_has(tmp_path: Path) -> None:
    assert_one_error(evaluate(tmp_path, "--metric", "deletion", "--method-option", "steps"), 2,
                     "--method-option takes METHOD.NAME=VALUE")


def test_audit_metric_options_get_the_same_checks(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    photo(data / "a.png")
    args = ["audit", str(data), "--out", str(tmp_path / "out"), *TINY]
    assert_one_error(run(*args, "--metrics", "deletion", "--metric-option", "deletion.stpe=3"),
                     2, "--metric-option 'deletion.stpe=3': metric 'deletion' has no option "
                        "'stpe'; did you mean 'step' or 'steps'?", DELETION)
    assert_one_error(run(*args, "--metric-option", "deletion.step=3"), 2,
                     "metric 'deletion' is not among the metrics of this run (none); add it "
                     "to --metrics")
    assert_one_error(run(*args, "--metrics", "deletion", "--metric-option",
                         "deletion.batch_size=1.5"), 2,
                     "deletion.batch_size takes an int or None (default None), got 1.5")


def test_valid_values_keep_their_meaning() -> None:
    keys = ["deletion", "insertion:xplique", "road", "randomisation"]
    parsed = parse_options(["deletion.step=none", "deletion.substrate=0.5",
                            "insertion:xplique.steps=5", "road.percentages=[10, 20.5]",
                            'randomisation.units=["fc"]', "randomisation.stages=3",
                            "deletion.step=112"], "--option", keys)
    assert parsed == {"deletion": {"step": 112, "substrate": 0.5},
                      "insertion:xplique": {"steps": 5}, "road": {"percentages": [10, 20.5]},
                      "randomisation": {"units": ["fc"], "stages": 3}}
    assert parse_options(["deletion.step=none"], "--option", keys) == {"deletion": {"step": None}}
    # without the run's metrics only the form is checked (the library checks the rest)
    assert parse_options(["anything.x=1"], "--option") == {"anything": {"x": 1}}
    with pytest.raises(MetricError, match="takes METRIC.NAME=VALUE"):
        parse_options(["anything"], "--option")
