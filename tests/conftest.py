"""Shared fixtures; the helpers they use live in tests/support.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MPLBACKEND", "Agg")
# One thread per xdist worker (two workers on two cores), two when run serially.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

from support import Snapshot  # noqa: E402  (tests/ is on sys.path from here on)


@pytest.fixture
def snapshot():
    return Snapshot
