"""Running the installed ``convlens`` script the way a user's shell does (for tests/cli)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FACTORY = f"{FIXTURES / 'tiny_model.py'}:build"
LABELS = FIXTURES / "tiny_labels.txt"  # ant, bee, cat, dog
TINY = ["--model", FACTORY, "--labels", str(LABELS), "--input-size", "32", "--device", "cpu"]


def script() -> list[str]:
    found = Path(sys.executable).with_name("convlens")
    if found.exists():
        return [str(found)]
    which = shutil.which("convlens")
    assert which, "the convlens script is not installed (pip install -e .)"
    return [which]


def run(*args: str, cwd: Path | None = None, **env: str | None) -> subprocess.CompletedProcess:
    """stdout and stderr piped (not terminals); NO_COLOR unset and colour forced on where a
    library would honour it, so that any escape code that can leak does (``NAME=None`` in
    ``env`` removes a variable)."""
    base = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    merged = {**base, "COLUMNS": "200", "MPLBACKEND": "Agg", "FORCE_COLOR": "1",
              "TERM": "xterm-256color", **env}
    merged = {k: v for k, v in merged.items() if v is not None}
    return subprocess.run([*script(), *args], capture_output=True, text=True, cwd=cwd,
                          env=merged, timeout=300)


def photo(path: Path, size: tuple[int, int] = (48, 32)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def assert_one_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exactly one ``error:`` line (and nothing else) on stderr, the exit code, the words."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "\x1b" not in result.stderr, repr(result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
