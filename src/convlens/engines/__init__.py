"""Engines: where a job's per-batch work runs - in this process, or on a Ray cluster.

The audit's pass, its causal check and ``evaluate`` all reduce to one shape of work: decode
the images of a dataset in fixed, consecutive *units* of ``batch_size`` entries, hand each decoded
:class:`~convlens.io.datasets.Batch` to a stateful *worker* (the model loaded once, a
method and its metrics bound), and collect what the worker returns. An engine runs that
shape; it knows nothing about audits or metrics.

* :class:`~convlens.engines.local.LocalEngine` (the default, nothing more to install):
  decoding in DataLoader processes, the worker in this process.
* :class:`~convlens.engines.ray.RayEngine` (``pip install 'convlens[ray]'``): Ray Data
  decodes units in parallel tasks and runs workers in a fixed actor pool (one model load
  per actor, GPUs requested per actor when the cluster has them); results come back to
  this process, which writes them.

Units are the same consecutive slices of the entries list on every engine, and a worker
sees the same batch whichever engine runs it, so with the same kernels and torch thread count
the results are identical, not merely close (tests/engines compare ``audit.json`` and the
evaluation as strings). CPU kernels sum in an order that depends on the thread count, so a
worker with fewer threads than this process may differ in the last rounded digit of a
probability (1e-6 on the bundled model, 2 threads against 1; BENCHMARKS.md).

Each engine module registers its class (``@register_engine``, :mod:`convlens.engines.registry`);
this package imports every module of its folder once (:func:`convlens.discovery.import_modules`),
so a new engine is one new file. See docs/architecture.md, "Engines": engines sit below the
jobs (``convlens explain``, the audit's pass, causal check and report, reference sets,
``evaluate``) and import io (and the Classifier type) only; every job passes them one
:class:`WorkerFactory` over its own per-batch function, and :func:`in_unit_order` puts units
back in order for a job whose output depends on it.
"""

from convlens.discovery import import_modules
from convlens.engines.base import BatchWorker, Engine, UnitResult, WorkerFactory, in_unit_order
from convlens.engines.registry import engine_names, get_engine, register_engine
from convlens.errors import EngineError

__all__ = ["ENGINES", "BatchWorker", "Engine", "EngineError", "UnitResult", "WorkerFactory",
           "engine_names", "get_engine", "in_unit_order", "register_engine"]

import_modules(__name__)  # importing an engine module registers it
ENGINES = engine_names()  # the built-in engines; engine_names() also sees ones added later
