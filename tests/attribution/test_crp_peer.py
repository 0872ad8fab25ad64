"""CRP against zennit-crp, its public implementation (optional: needs a Python where
zennit-crp imports, named by ``CONVLENS_CRP_PYTHON``; it pins ``zennit<=0.4.6`` and so
cannot share convlens's test environment). Skipped otherwise, with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_matches_zennit_crp_where_the_layers_rules_agree() -> None:
    """benchmarks/crp_peer.py --quick: VGG-like and ResNet-18 nets in float64, the
    conditional maps of each sample's 4 most relevant channels with the bias-free z+
    composite (convlens's convention; zennit 0.4.6's stock z+ keeps biases) and
    EpsilonGammaBox, equal within 1e-10 relative."""
    peer = os.environ.get("CONVLENS_CRP_PYTHON")
    if not peer:
        pytest.skip("zennit-crp is not installed here: set CONVLENS_CRP_PYTHON to a Python "
                    "with zennit-crp (see benchmarks/crp_peer.py)")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "crp_peer.py"),
                             "--quick", "--peer-python", peer, "--strict"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
