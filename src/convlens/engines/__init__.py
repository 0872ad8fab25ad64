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

See docs/architecture.md, "Engines": engines sit between jobs and metrics; they import io
only, and the audit (pass and causal check) and ``evaluate`` pass them a
:class:`WorkerFactory`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from convlens.errors import EngineError, unknown_choice
from convlens.io.datasets import Batch, Entry
from convlens.preprocessing import Preprocessing

__all__ = ["ENGINES", "Engine", "EngineError", "UnitResult", "WorkerFactory", "get_engine"]

ENGINES = ("local", "ray")


class BatchWorker(Protocol):
    """Built once per worker; called with every decoded batch (``batch.x`` is a tensor)."""

    def __call__(self, batch: Batch) -> Any: ...


class WorkerFactory(Protocol):
    """Builds a :class:`BatchWorker`; picklable, so a Ray actor can build its own copy.

    ``device`` is where the worker should compute (``"cuda"`` on an actor that was given a
    GPU), or ``None`` to keep the model where it is.
    """

    def build(self, device: str | None = None) -> BatchWorker: ...


@dataclass
class UnitResult:
    """One unit's outcome, as an engine yields it.

    Attributes:
        unit: Position of the unit (entries ``unit * batch_size`` onwards).
        batch: The batch without its tensor (``x`` is None): items, bad files, skipped items.
        result: What the worker returned, or None when nothing in the unit was decoded.
    """

    unit: int
    batch: Batch
    result: Any


class Engine(Protocol):
    """Runs a worker over the units of a list of entries."""

    name: str

    def map_units(self, entries: Sequence[Entry], preprocessing: Preprocessing,
                  factory: WorkerFactory, *, batch_size: int, salt: str = "",
                  skip: Collection[str] = frozenset(), max_pixels: int | None = None
                  ) -> Iterator[UnitResult]:
        """Yield one :class:`UnitResult` per unit, in any order."""
        ...


def get_engine(engine: str | Engine | None, **options: Any) -> Engine:
    """``"local"``, ``"ray"``, an engine object, or None (local) -> an engine.

    ``options`` go to the engine's constructor (``workers`` for local; ``address``,
    ``actors``, ``cpus_per_actor``, ``gpus_per_actor`` for Ray).

    Raises:
        EngineError: An unknown name, or options the engine does not take.
    """
    if engine is None or engine == "local":
        from convlens.engines.local import LocalEngine

        return _construct(LocalEngine, options)
    if engine == "ray":
        from convlens.engines.ray import RayEngine

        return _construct(RayEngine, options)
    if isinstance(engine, str):
        raise EngineError(unknown_choice("engine", engine, ENGINES))
    if options:
        raise EngineError("engine options are given to the engine's constructor when an "
                          "engine object is passed")
    return engine


def _construct(kind: type, options: dict[str, Any]) -> Any:
    try:
        return kind(**options)
    except TypeError as error:
        raise EngineError(f"{kind.__name__}: {error}") from None
