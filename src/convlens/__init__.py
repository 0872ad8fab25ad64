"""convlens: see why a convolutional image classifier decides what it decides.

The public face::

    import convlens as cl
    clf = cl.load_model()                                   # bundled EfficientNet-Lite0
    a = cl.attribute(clf, clf.preprocess("cat.jpg"), "gradcam")
    exps = cl.explain(clf, ["cat.jpg"], methods=["gradcam", "saliency"])
    cl.metrics.deletion(clf, x, maps)                       # a module, imported on first use

Names are imported on first use (PEP 562), so ``import convlens`` and the command line's
``--help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Audit": "convlens.auditing.run",
    "Classifier": "convlens.models.classifier",
    "ConceptMaps": "convlens.attribution.crp",
    "ConvlensError": "convlens.errors",
    "ConvlensWarning": "convlens.errors",
    "Explanation": "convlens.explanations",
    "LayerInfo": "convlens.models.layers",
    "Method": "convlens.attribution.core",
    "ReferenceSets": "convlens.concepts.references",
    "TCAVResult": "convlens.concepts.tcav",
    "Visualization": "convlens.visualization.optimize",
    "as_classifier": "convlens.models.classifier",
    "attribute": "convlens.attribution.core",
    "audit": "convlens.auditing.run",
    "class_grid": "convlens.explanations",
    "concept_maps": "convlens.attribution.crp",
    "concept_relevance": "convlens.attribution.crp",
    "correct": "convlens.correction.run",
    "evaluate": "convlens.metrics.evaluate",
    "explain": "convlens.explanations",
    "get_method": "convlens.attribution.core",
    "iter_explain": "convlens.explanations",
    "layers": "convlens.models.classifier",
    "load_model": "convlens.models.loading",
    "methods": "convlens.attribution.core",
    "metrics": "convlens.metrics",
    "objectives": "convlens.objectives",
    "reference_sets": "convlens.concepts.references",
    "tcav": "convlens.concepts.tcav",
    "visualize": "convlens.visualization.optimize",
}

# public names that are modules themselves: cl.metrics.deletion(...), cl.objectives.channel(...)
_MODULES = frozenset({"metrics", "objectives"})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'convlens' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

