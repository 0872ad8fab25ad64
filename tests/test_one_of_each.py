"""One of each (issue 19, item 3): every exception class in ``errors.py``, one ``_in_notebook``.

The source of ``src/convlens`` is read with :mod:`ast`, not imported, so that a class defined
in a module no test imports is found too.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

import convlens
from convlens import errors

SOURCE = Path(convlens.__file__).resolve().parent

NOT_MOVED_YET: set[tuple[str, str]] = set()
"""Left where they are while ``auditing/run.py`` is rewritten in parallel (issue 19, item 2);
each pair leaves this set when it moves, and the test below fails if it stays needlessly."""

SIGNALS = {("visualization/optimize.py", "_StopForward"), ("app/guard.py", "_Refused")}
"""Private control-flow signals that never leave their module (a user never sees one): a hook
stopping the forward pass, the request guard unwinding the app after it answered itself."""


def _modules() -> dict[str, ast.Module]:
    return {path.relative_to(SOURCE).as_posix(): ast.parse(path.read_text(encoding="utf-8"))
            for path in sorted(SOURCE.rglob("*.py"))}


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _exception_classes(modules: dict[str, ast.Module]) -> set[tuple[str, str]]:
    """(module, class) for every class deriving, through any module, from BaseException."""
    known = {name for name, value in vars(builtins).items()
             if isinstance(value, type) and issubclass(value, BaseException)}
    classes = [(where, node) for where, tree in modules.items() for node in ast.walk(tree)
               if isinstance(node, ast.ClassDef)]
    found: set[tuple[str, str]] = set()
    grew = True
    while grew:  # a subclass may come before its base in the walk: repeat until stable
        grew = False
        for where, node in classes:
            if (where, node.name) not in found and any(
                    _base_name(base) in known for base in node.bases):
                found.add((where, node.name))
                known.add(node.name)
                grew = True
    return found


def test_every_exception_class_is_defined_in_errors_py() -> None:
    found = _exception_classes(_modules())
    elsewhere = {pair for pair in found if pair[0] != "errors.py"} - SIGNALS - NOT_MOVED_YET
    assert not elsewhere, (
        f"exception classes defined outside src/convlens/errors.py: {sorted(elsewhere)}; move "
        "each into errors.py and import it back where it was (old import paths keep working)")
    moved = NOT_MOVED_YET - found
    assert not moved, f"moved already, drop from NOT_MOVED_YET: {moved}"
    assert ("errors.py", "MetricError") in found  # the walk sees errors.py's own classes


@pytest.mark.parametrize(("module", "name"), [
    ("convlens.metrics.core", "MetricError"), ("convlens.app.audits", "AuditError"),
    ("convlens.auditing.run", "LabelMismatchError"),
    ("convlens.app.audits", "AuditNotFound"), ("convlens.app.atlases", "AtlasNotFound"),
    ("convlens.app.work", "Cancelled"),
    ("convlens.app.guard", "RequestTooLarge"), ("convlens.app.runner", "PortError"),
    ("convlens.app.server", "BadRequest"), ("convlens.app.server", "TooMuchWork"),
    ("convlens.engines", "EngineError"), ("convlens.concepts.patches", "PatchError"),
    ("convlens.concepts.tcav", "ConceptError"),
    ("convlens.concepts.references", "ReferenceSetError"),
    ("convlens.correction.report", "CorrectionReportError"),
    ("convlens.correction.direction", "DirectionError"),
])
def test_old_import_paths_give_the_same_class(module: str, name: str) -> None:
    imported = __import__(module, fromlist=[name])
    assert getattr(imported, name) is getattr(errors, name)
    assert issubclass(getattr(errors, name), errors.ConvlensError)


def test_one_in_notebook() -> None:
    defined = sorted(where for where, tree in _modules().items() for node in ast.walk(tree)
                     if isinstance(node, ast.FunctionDef)
                     and node.name.lstrip("_") == "in_notebook")
    assert defined == ["progress.py"], defined
