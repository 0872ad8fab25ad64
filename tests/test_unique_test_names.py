"""Every test file has a basename of its own (issue 19, item 7: tests mirror the package).

``tests/`` holds no ``__init__.py``, so pytest imports each test file by its basename: two
files named alike (``tests/test_complexity.py`` beside ``tests/metrics/test_complexity.py``)
stop the whole run at collection with "import file mismatch". This caught one such pair.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def test_no_two_test_files_share_a_basename() -> None:
    tests = Path(__file__).resolve().parent
    seen: dict[str, list[str]] = defaultdict(list)
    for path in tests.rglob("test_*.py"):
        seen[path.name].append(str(path.relative_to(tests)))
    shared = {name: sorted(paths) for name, paths in seen.items() if len(paths) > 1}
    assert not shared, f"test files share a basename (pytest cannot import both): {shared}"
