"""--option METHOD.NAME=VALUE, `convlens methods`, --version and the cheap import of the app."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_support import run

from convlens.attribution.core import get_method
from convlens.cli._common import parse_method_options
from convlens.errors import ConvlensError, MethodError

IG, SG = "integrated_gradients", "smoothgrad"


def test_prefixed_values_are_literals_and_fall_back_to_strings() -> None:
    assert {"steps", "baseline"} <= set(get_method(IG).options)
    parsed = parse_method_options([f"{IG}.steps=16", f"{IG}.baseline=0.5"], [IG, "saliency"])
    assert parsed == {IG: {"steps": 16, "baseline": 0.5}, "saliency": {}}
    assert type(parsed[IG]["steps"]) is int
    lrp = parse_method_options(["lrp.composite=epsilon_gamma_box"], ["lrp"])
    assert lrp == {"lrp": {"composite": "epsilon_gamma_box"}}  # not a literal: the string
    quoted = parse_method_options(["lrp.composite='epsilon_plus_flat'"], ["lrp"])
    assert quoted == {"lrp": {"composite": "epsilon_plus_flat"}}


def test_later_values_win() -> None:
    assert parse_method_options([f"{IG}.steps=8", f"{IG}.steps=32"], [IG]) == {IG: {"steps": 32}}


def test_unprefixed_option_applies_to_every_method_that_has_it() -> None:
    assert "samples" in get_method(SG).options and "samples" in get_method("vargrad").options
    assert "samples" not in get_method("gradcam").options
    parsed = parse_method_options(["samples=4"], [SG, "vargrad", "gradcam"])
    assert parsed == {SG: {"samples": 4}, "vargrad": {"samples": 4}, "gradcam": {}}


@pytest.mark.parametrize("value,needles", [
    ("steps", ["METHOD.NAME=VALUE"]),                       # no '='
    ("=3", ["METHOD.NAME=VALUE"]),                          # no name
    (f"{IG}.steps=", ["METHOD.NAME=VALUE"]),                # no value
    (".steps=3", ["METHOD.NAME=VALUE"]),                    # empty method
    ("integrated_gradient.steps=3", ["unknown method", f"did you mean '{IG}'"]),
    ("saliency.steps=3", ["is not among the methods of this run", IG]),
    (f"{IG}.stepz=3", ["has no option 'stepz'", "did you mean 'steps'",
                       f"steps={get_method(IG).options['steps']!r}"]),
    (f"{IG}.steps=many", ["takes an int (default 50)", "got 'many'"]),
    ("window=3", ["no method of this run has an option 'window'", f"{IG}: ", "steps=50",
                  f"{SG}: samples=50"]),
])
def test_bad_options_name_the_valid_ones(value: str, needles: list[str]) -> None:
    with pytest.raises(MethodError) as info:
        parse_method_options([value], [IG, SG] if "not among" not in needles[0] else [IG])
    assert isinstance(info.value, ConvlensError)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_types_come_from_the_method_signature_not_the_default() -> None:
    # occlusion's window is ``int | tuple[int, int]`` with default 16: a pair is valid
    assert parse_method_options(["occlusion.window=(16, 8)"], ["occlusion"]) == {
        "occlusion": {"window": (16, 8)}}
    with pytest.raises(MethodError, match=r"takes an int or a tuple \(int, int\) \(default 16\)"):
        parse_method_options(["occlusion.window=(16, 8, 2)"], ["occlusion"])
    # n_segments is ``int | None`` with default None: None no longer means "anything"
    with pytest.raises(MethodError, match="n_segments takes an int or None"):
        parse_method_options(["n_segments=lots"], ["shapley_sampling"])
    # untyped for us (``object``, the project's RulesOption, CAM layers): anything goes
    assert parse_method_options(["lrp.rules='x'", "gradcam.layer=conv1"], ["lrp", "gradcam"]
                                ) == {"lrp": {"rules": "x"}, "gradcam": {"layer": "conv1"}}


def test_methods_table_lists_options_and_says_how_to_pass_them() -> None:
    result = run("methods")
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "--option METHOD.NAME=VALUE" in out
    assert f"steps={get_method(IG).options['steps']!r}" in out


def test_version() -> None:
    from importlib.metadata import version

    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"convlens {version('convlens')}"


def test_importing_the_app_does_not_import_torch() -> None:
    # What keeps `convlens --help` fast: commands import torch when they run, not before.
    code = ("import sys, convlens.cli.app; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'numpy', 'PIL', 'matplotlib')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_help_answers_without_loading_torch() -> None:
    code = ("import sys\nfrom convlens.cli.app import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
            "print('torch' in sys.modules, code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False 0"


# ------------------------------------------------------------- infinite and NaN numbers


@pytest.mark.parametrize("command,value,needles", [
    # 1e999 parses to inf: it used to run, give all-zero maps and write Infinity (not JSON)
    ("explain", "smoothgrad.sigma=1e999", ["smoothgrad.sigma", "finite number", "got inf"]),
    ("explain", "smoothgrad.sigma=nan", ["smoothgrad.sigma", "finite number"]),
    ("explain", "sigma=-inf", ["smoothgrad.sigma", "finite number"]),
    ("evaluate", "max_sensitivity.radius=NaN", ["max_sensitivity.radius", "finite number"]),
])
def test_non_finite_option_values_are_one_line_errors(tmp_path, command: str, value: str,
                                                      needles: list[str]) -> None:
    from cli_support import TINY, assert_one_error, photo

    image = photo(tmp_path / "p.png")
    extra = (["--method", SG, "--out", str(tmp_path / "out")] if command == "explain"
             else ["--method", "saliency", "--metric", "max_sensitivity"])
    assert_one_error(run(command, str(image), *TINY, *extra, "--option", value), 2, *needles)
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e999])
def test_the_library_refuses_non_finite_options_too(value: float) -> None:
    import torch
    from tiny_models import TinyVGG

    import convlens as cl
    from convlens.metrics.core import MetricError, get_metric

    with pytest.raises(MethodError, match=r"smoothgrad\.sigma takes a finite number"):
        cl.attribute(TinyVGG().eval(), torch.rand(1, 3, 8, 8), SG, sigma=value, samples=2)
    with pytest.raises(MetricError, match=r"max_sensitivity\.radius takes a finite number"):
        get_metric("max_sensitivity").bind({"radius": value})


def test_a_string_option_may_still_be_called_inf() -> None:
    from convlens.cli.evaluate import parse_options

    parsed = parse_options(["max_sensitivity.norm=inf"], "--option", ["max_sensitivity"])
    assert parsed == {"max_sensitivity": {"norm": "inf"}}
