"""CONTRIBUTING.md's recipes, followed literally (issue 19, items 1 and 6).

Each code block marked ``<!-- recipe: NAME -> src/convlens/PACKAGE/FILE.py -->`` in
CONTRIBUTING.md is one new file and nothing else: it is written as ``FILE.py`` into a
temporary folder added to ``convlens.PACKAGE.__path__``, and the package's own discovery
(:func:`convlens.discovery.import_modules`, what importing the package runs) finds and
imports it, as it would find the file dropped into ``src/``; nothing else is edited. The
method then runs through ``cl.attribute``, the metric through the metrics API and
``cl.evaluate``, the engine through ``get_engine`` and ``cl.evaluate(engine=...)``. The
registries are copied before and restored after each test, and the new module is forgotten,
so nothing registered here leaks into other tests.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TinyVGG, seeded

import convlens as cl
from convlens.attribution import registry as method_registry
from convlens.attribution.relevance import composites as composite_registry
from convlens.attribution.relevance import rules as rule_registry
from convlens.discovery import import_modules
from convlens.engines import registry as engine_registry
from convlens.engines.registry import engine_names, get_engine
from convlens.metrics import registry as metric_registry

GUIDE = Path(__file__).parents[1] / "CONTRIBUTING.md"


def recipe(name: str) -> tuple[str, str]:
    """The file named by ``<!-- recipe: name -> path -->`` in CONTRIBUTING.md, and the fenced
    Python block that follows it."""
    found = re.search(rf"<!-- recipe: {name} -> (\S+) -->\s*```python\n(.*?)```",
                      GUIDE.read_text(), re.S)
    assert found, f"CONTRIBUTING.md has no python block marked <!-- recipe: {name} -> PATH -->"
    return found.group(1), found.group(2)


@pytest.fixture
def follow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[Callable[[str], ModuleType]]:
    """Drop a recipe's file into its package (a temporary folder on the package's path) and
    let the package's discovery import it, on copies of the registries."""
    cl.methods()
    cl.metrics.metrics()  # the built-ins are registered before the copies are taken
    monkeypatch.setattr(method_registry, "_REGISTRY", dict(method_registry._REGISTRY))
    monkeypatch.setattr(metric_registry, "_REGISTRY", dict(metric_registry._REGISTRY))
    monkeypatch.setattr(engine_registry, "_REGISTRY", dict(engine_registry._REGISTRY))
    monkeypatch.setattr(rule_registry, "_RULES", dict(rule_registry._RULES))
    monkeypatch.setattr(composite_registry, "_COMPOSITES", dict(composite_registry._COMPOSITES))
    added: list[str] = []

    def load(name: str) -> ModuleType:
        path, code = recipe(name)
        folder, _, file = path.rpartition("/")
        assert folder.startswith("src/convlens/") and file.endswith(".py"), path
        package = folder.removeprefix("src/").replace("/", ".")
        assert (GUIDE.parent / folder).is_dir(), f"{path}: no such package folder"
        assert not (GUIDE.parent / path).exists(), f"{path} exists: pick a new name"
        extra = tmp_path / package
        extra.mkdir()
        (extra / file).write_text(code)
        monkeypatch.setattr(sys.modules[package], "__path__",
                            [*sys.modules[package].__path__, str(extra)])
        module = f"{package}.{file.removesuffix('.py')}"
        added.append(module)
        assert module.rpartition(".")[2] in import_modules(package)  # nothing else edited
        return sys.modules[module]

    yield load
    for module in added:
        sys.modules.pop(module, None)
        package, _, attribute = module.rpartition(".")
        if hasattr(sys.modules[package], attribute):
            delattr(sys.modules[package], attribute)


def _problem() -> tuple[torch.nn.Module, torch.Tensor]:
    model = seeded(TinyVGG(classes=4), dtype=torch.float32).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, x


def test_the_method_recipe_adds_a_method_that_runs(follow, monkeypatch) -> None:
    follow("method")
    method = next(m for m in cl.methods() if m.name == "toy_gradient")
    assert (method.family, method.space, dict(method.options)) == ("gradient", "input",
                                                                   {"scale": 1.0})
    model, x = _problem()
    got = cl.attribute(model, x, "toy_gradient", target=2)
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(leaf)[:, 2].sum(), leaf)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(cl.attribute(model, x, "toy_gradient", target=2, scale=3.0),
                               3 * expected)
    monkeypatch.undo()
    assert "toy_gradient" not in [m.name for m in cl.methods()]


def test_the_metric_recipe_adds_a_metric_the_api_and_evaluate_use(follow, monkeypatch) -> None:
    follow("metric")
    metric = cl.metrics.get_metric("toy_top_share")
    assert metric in cl.metrics.metrics("complexity")
    assert dict(metric.options) == {"fraction": 0.1}
    model, x = _problem()
    maps = torch.zeros(2, 1, 16, 16)
    maps[0, 0, :4, :4] = 1.0                  # all mass in 16 of 256 pixels
    maps[1, 0] = 1.0                          # uniform
    scores = metric.compute(model, x, maps, **metric.bind({"fraction": 0.25}))
    np.testing.assert_allclose(scores.values, [1.0, 0.25])
    result = cl.evaluate(model, x, methods=["saliency"], metrics=["toy_top_share"],
                         bootstrap=0)
    assert result.scores[("saliency", "toy_top_share")].values.shape == (2,)
    monkeypatch.undo()
    assert "toy_top_share" not in [m.name for m in cl.metrics.metrics()]


def test_the_engine_recipe_adds_an_engine_evaluate_runs_on(follow, monkeypatch,
                                                         tmp_path) -> None:
    """CONTRIBUTING.md, "Add an engine": the name reaches get_engine and cl.evaluate, and the
    scores equal the local engine's although the units come back last first."""
    follow("engine")
    assert "toy_reversed" in engine_names()
    assert get_engine("toy_reversed").name == "toy_reversed"
    rng = np.random.default_rng(0)
    paths = []
    for k in range(5):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(paths[-1])
    model, _ = _problem()
    classifier = cl.Classifier(model, labels=list("abcd"), input_size=16, mean=(0, 0, 0),
                               std=(1, 1, 1), resize="squash", device="cpu")
    settings = dict(methods=["saliency"], metrics=["deletion"], image_batch=2, bootstrap=0)
    ours = cl.evaluate(classifier, paths, engine="toy_reversed", **settings)
    local = cl.evaluate(classifier, paths, engine="local", **settings)
    np.testing.assert_array_equal(ours.scores[("saliency", "deletion")].values,
                                  local.scores[("saliency", "deletion")].values)
    monkeypatch.undo()
    assert "toy_reversed" not in engine_names()


def test_the_rule_recipe_adds_a_rule_and_a_composite_lrp_uses(follow, monkeypatch) -> None:
    """CONTRIBUTING.md, "Add an LRP rule or composite": one file of relevance/ registers both;
    the composite equals epsilon_plus with epsilon 0.5 on the dense layers."""
    follow("rule")
    assert "toy_wide_epsilon" in rule_registry.rule_names()
    assert "toy_plus_wide" in composite_registry.composite_names()
    model, x = _problem()
    got = cl.attribute(model, x, "lrp", target=1, composite="toy_plus_wide")
    expected = cl.attribute(model, x, "lrp", target=1, composite="epsilon_plus", epsilon=0.5)
    torch.testing.assert_close(got, expected)
    assert not torch.equal(got, cl.attribute(model, x, "lrp", target=1,
                                             composite="epsilon_plus"))
    monkeypatch.undo()
    assert "toy_plus_wide" not in composite_registry.composite_names()
