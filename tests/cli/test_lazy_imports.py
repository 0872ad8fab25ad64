"""Lazy imports in ``cli/`` have one reason, and ``app/`` has none (issue 19, convlens 13).

``convlens --help`` imports every command module and must not import torch, numpy or Pillow
(tests/cli/test_options.py), so a command imports the library when it runs. A lazy import of
a convlens module that ``--help`` loads anyway saves nothing: it belongs at the module's top.
``convlens.app`` is imported only when ``convlens serve`` runs, so its modules import at their
top. The import graph is read with tests/test_import_graph.py's AST walk (nothing imported).
"""

from __future__ import annotations

import json
import subprocess
import sys

from test_import_graph import SRC, build_graph


def _loaded_by_the_app() -> set[str]:
    """The convlens modules that importing the ``convlens`` command line loads."""
    code = ("import json, sys, convlens.cli.app; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'convlens')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_cli_imports_lazily_only_what_help_does_not_load() -> None:
    loaded = _loaded_by_the_app()
    assert "convlens.cli.app" in loaded and "convlens.errors" in loaded
    assert not any(m.startswith("convlens.app") for m in loaded), "serve must import app lazily"
    needless = [(module, line, target) for module, line, target in build_graph(SRC).function_level
                if module.startswith("convlens.cli")
                and all(t in loaded for t in target.split(", "))]
    assert needless == [], f"import these at the module's top (--help loads them anyway): " \
                           f"{needless}"


def test_app_modules_import_at_their_top() -> None:
    lazy = [entry for entry in build_graph(SRC).function_level
            if entry[0].startswith("convlens.app")]
    assert lazy == [], lazy
