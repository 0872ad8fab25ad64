"""Kept for compatibility: the preprocessing moved to :mod:`convlens.preprocessing` (issue 19).

This name is an alias of that module (same object), so old imports, private names and
monkeypatch targets keep working. New code imports :mod:`convlens.preprocessing`.
"""

import sys

from convlens import preprocessing as _moved

sys.modules[__name__] = _moved
