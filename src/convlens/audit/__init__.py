"""Dataset-scale audits: which strategies a classifier uses, and which ones are suspicious.

``spray`` (Spectral Relevance Analysis, Lapuschkin et al. 2019) clusters attribution maps;
``suspicion`` ranks the clusters and checks the top ones causally; ``passes`` is the
streaming pass and ``analysis`` assembles ``audit.json``. See docs/architecture.md, "Audit".

The user-facing function is :func:`convlens.auditing.audit`, exported as ``cl.audit``. Once
this package is imported, Python binds ``convlens.audit`` to the package itself, so the
package is made callable and forwards the call: ``cl.audit(classifier, data, ...)`` works
either way.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from convlens.auditing import audit

        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
