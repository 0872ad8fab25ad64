"""Kept for compatibility: the progress events moved to :mod:`convlens.progress` (issue 19).

This name is an alias of that module (same object), so old imports, private names and
monkeypatch targets keep working. New code imports :mod:`convlens.progress`.
"""

import sys

from convlens import progress as _moved

sys.modules[__name__] = _moved
