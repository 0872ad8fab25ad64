"""Issue 19 item 4: a model is typed, not ``Any``.

Every parameter or field named ``classifier`` or ``model`` in ``src/convlens`` is annotated with
:class:`convlens.models.classifier.Classifier` (a function that needs the class) or
``ModelLike`` (``Classifier | nn.Module``, what :func:`as_classifier` accepts), never ``Any``.
The exceptions are models that are not classifiers, listed by name with what they are.
"""

from __future__ import annotations

import ast
from pathlib import Path

import torch.nn as nn

from convlens.models.classifier import Classifier, ModelLike, as_classifier

SRC = Path(__file__).resolve().parents[1] / "src" / "convlens"
NAMES = ("classifier", "model")
NOT_CLASSIFIERS = {
    ("models/onnx_models.py", "fold_identity_initializers"): "an onnx.ModelProto",
    ("models/onnx_models.py", "_input_shape"): "an onnx.ModelProto",
    ("auditing/strategies.py", "_decide"): "a fitted scikit-learn estimator",
}


def _untyped(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    where = path.relative_to(SRC).as_posix()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if (where, node.name) in NOT_CLASSIFIERS:
                continue
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            found += [f"{where}:{a.lineno} {node.name}({a.arg})" for a in arguments
                      if a.arg in NAMES and a.annotation is not None
                      and "Any" in ast.unparse(a.annotation)]
        if isinstance(node, ast.ClassDef):
            found += [f"{where}:{item.lineno} {node.name}.{item.target.id}"
                      for item in node.body
                      if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                      and item.target.id in NAMES and "Any" in ast.unparse(item.annotation)]
    return found


def test_no_model_parameter_or_field_is_typed_any() -> None:
    untyped = [hit for path in sorted(SRC.rglob("*.py")) for hit in _untyped(path)]
    assert not untyped, (
        "type these as Classifier (needs the class) or ModelLike (anything as_classifier "
        f"takes), from convlens.models.classifier: {untyped}"
    )


def test_the_exceptions_still_exist() -> None:
    for (where, name), _what in NOT_CLASSIFIERS.items():
        tree = ast.parse((SRC / where).read_text(encoding="utf-8"))
        assert any(isinstance(n, ast.FunctionDef) and n.name == name for n in ast.walk(tree)), (
            f"{where}: {name} is gone; delete it from NOT_CLASSIFIERS")


def test_model_like_is_what_as_classifier_accepts() -> None:
    module = nn.Linear(2, 2)
    assert isinstance(module, ModelLike)
    classifier = as_classifier(module)
    assert isinstance(classifier, ModelLike) and isinstance(classifier, Classifier)
    assert not isinstance("a path", ModelLike)
