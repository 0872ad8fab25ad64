"""A package's family modules found by listing its folder and imported once (a leaf).

A method, a metric, an LRP rule or composite, or an engine is one file: the file registers
itself when imported (``@register``, ``@register_metric``, ``@register_layer_rule``,
``@register_engine``), and the package's ``__init__.py`` calls :func:`import_modules` once,
so a new file in the folder is found with nothing else to edit (docs/architecture.md,
"Layers"; CONTRIBUTING.md's recipes).

The rule: every module and subpackage directly in the package's folder is imported, in
sorted name order (so registration order, and with it every listing, is the same on every
machine), except names starting with ``_``, which are private. Infrastructure modules
(``registry.py``, ``core.py``, ``base.py``...) are imported too: the families import them
anyway, and importing one registers nothing. A module that must not be imported with its
package (an optional extra at import time) starts with ``_`` or imports that extra lazily.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys


def import_modules(package: str) -> tuple[str, ...]:
    """Import every public module of ``package`` (already being imported), sorted by name.

    Args:
        package: The package's dotted name (``__name__`` in its ``__init__.py``).

    Returns:
        The module names imported (``("cam", "core", ...)``). Calling it again imports only
        modules that appeared since (the others are in ``sys.modules``).

    Example:
        >>> import convlens.engines
        >>> "local" in import_modules("convlens.engines")
        True
    """
    path = sys.modules[package].__path__
    names = sorted({info.name for info in pkgutil.iter_modules(path)
                    if not info.name.startswith("_")})
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return tuple(names)
