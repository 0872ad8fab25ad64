"""No function a reader cannot hold (issue 19, convlens 13, item 5).

ruff's C901 (McCabe complexity) is on with a limit of 15 in ``pyproject.toml``; a function
above it is split by job into named helpers. This test runs ruff's own check on the linted
tree so that a new function over the limit fails the suite, not only ``make test``'s lint
step, and keeps the limit and the empty ignore list from drifting.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["src", "tests", "benchmarks", "examples/render.py", "examples/screenshot_app.py"]


def _ruff() -> list[str] | None:
    """How to run ruff here: the module beside this Python, else the one on PATH."""
    found = subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True)
    if found.returncode == 0:
        return [sys.executable, "-m", "ruff"]
    return [shutil.which("ruff")] if shutil.which("ruff") else None


def test_the_complexity_limit_is_15_and_nothing_is_exempt() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert "C90" in lint["select"]
    assert lint["mccabe"]["max-complexity"] == 15
    exempt = {path: rules for path, rules in lint.get("per-file-ignores", {}).items()
              if any(rule.startswith("C90") for rule in rules)}
    assert exempt == {}


def test_no_function_is_above_the_complexity_limit() -> None:
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install 'convlens[dev]')")
    result = subprocess.run([*ruff, "check", "--select", "C901", "--output-format", "concise",
                             *LINTED], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
