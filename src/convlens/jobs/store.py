"""Kept for compatibility: the results store moved to :mod:`convlens.store` (issue 19).

This name is an alias of that module (same object), so old imports, private names and
monkeypatch targets keep working. New code imports :mod:`convlens.store`.
"""

import sys

from convlens import store as _moved

sys.modules[__name__] = _moved
