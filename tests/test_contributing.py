"""CONTRIBUTING.md's recipes, followed literally (issue 19, item 6).

Each code block marked ``<!-- recipe: NAME -->`` in CONTRIBUTING.md is written to a temporary
module file and imported, as a contributor's new file would be; the method then runs through
``cl.attribute``, the metric through the metrics API and ``cl.evaluate``, the engine through
``get_engine`` and ``cl.evaluate(engine=...)``. The recipe's
"today also edit" step (adding the module to the built-in import line) is replaced by importing
the file directly. The registries are copied before and restored after each test, so nothing
registered here leaks into other tests.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TinyVGG, seeded

import convlens as cl
from convlens.attribution import registry as method_registry
from convlens.engines import registry as engine_registry
from convlens.engines.registry import engine_names, get_engine
from convlens.metrics import registry as metric_registry

GUIDE = Path(__file__).parents[1] / "CONTRIBUTING.md"


def recipe(name: str) -> str:
    """The fenced Python block that follows ``<!-- recipe: name -->`` in CONTRIBUTING.md."""
    found = re.search(rf"<!-- recipe: {name} -->\s*```python\n(.*?)```", GUIDE.read_text(),
                      re.S)
    assert found, f"CONTRIBUTING.md has no python block marked <!-- recipe: {name} -->"
    return found.group(1)


@pytest.fixture
def follow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Write a recipe to a module file and import it, on copies of the registries."""
    cl.methods()
    cl.metrics.metrics()  # the built-ins are registered before the copies are taken
    monkeypatch.setattr(method_registry, "_REGISTRY", dict(method_registry._REGISTRY))
    monkeypatch.setattr(metric_registry, "_REGISTRY", dict(metric_registry._REGISTRY))
    monkeypatch.setattr(engine_registry, "_REGISTRY", dict(engine_registry._REGISTRY))

    def load(name: str) -> ModuleType:
        path = tmp_path / f"contributed_{name}.py"
        path.write_text(recipe(name))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


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
