"""Trust in a heatmap, measured: faithfulness, robustness, randomisation and complexity metrics.

Functional core (one module per family, each metric a pure function of model, images, maps or
method, and target, registered in :mod:`convlens.metrics.registry`) plus :func:`evaluate`,
which ranks methods on a user's model and photos (docs/architecture.md, "Layers").

Importing this package imports every module of its folder once
(:func:`convlens.discovery.import_modules`), and every registered metric's function is
exported under its own name (``convlens.metrics.deletion``), so a new metric is one new file.
"""

from convlens.discovery import import_modules
from convlens.metrics.registry import Metric as Metric
from convlens.metrics.registry import get_metric as get_metric
from convlens.metrics.registry import metrics

import_modules(__name__)  # importing a family registers its metrics

# After the import above: a module named like its function (complexity, road, evaluate) is
# bound on the package by that import, and the function must win.
from convlens.metrics.core import MetricError as MetricError  # noqa: E402
from convlens.metrics.core import Scores as Scores  # noqa: E402
from convlens.metrics.evaluate import Evaluation as Evaluation  # noqa: E402
from convlens.metrics.evaluate import Summary as Summary  # noqa: E402
from convlens.metrics.evaluate import evaluate as evaluate  # noqa: E402

globals().update({metric.compute.__name__: metric.compute for metric in metrics()})

__all__ = sorted({"Evaluation", "Summary", "evaluate", "Metric", "MetricError", "Scores",
                  "get_metric", "metrics", *(metric.compute.__name__ for metric in metrics())})
