"""Trust in a heatmap, measured: faithfulness, robustness, randomisation and complexity metrics.

Functional core (one module per family, each metric a pure function of model, images, maps or
method, and target, registered in :mod:`convlens.metrics.core`) plus :func:`evaluate`, which
ranks methods on a user's model and photos (docs/architecture.md, "Layers").
"""

from convlens.metrics.complexity import complexity, sparseness
from convlens.metrics.core import MetricError, Scores
from convlens.metrics.deletion_insertion import deletion, insertion
from convlens.metrics.evaluate import Evaluation, Summary, evaluate
from convlens.metrics.faithfulness import faithfulness_correlation, mufidelity
from convlens.metrics.randomisation import model_randomisation, random_logit
from convlens.metrics.registry import Metric, get_metric, metrics
from convlens.metrics.road import road
from convlens.metrics.robustness import infidelity, max_sensitivity

__all__ = [
    "Evaluation",
    "Summary",
    "evaluate",
    "Metric",
    "MetricError",
    "Scores",
    "complexity",
    "deletion",
    "faithfulness_correlation",
    "get_metric",
    "infidelity",
    "insertion",
    "max_sensitivity",
    "metrics",
    "model_randomisation",
    "mufidelity",
    "random_logit",
    "road",
    "sparseness",
]
