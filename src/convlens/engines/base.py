"""What an engine is: the :class:`Engine` protocol, :class:`UnitResult`, and the one
:class:`WorkerFactory` every job hands an engine.

A leaf of the engines package: the engine modules (``local.py``, ``ray.py``) and the callers
import these types from here or from ``convlens.engines``, which re-exports them
(docs/architecture.md, "Engines").
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from convlens.io.datasets import Batch, Entry
from convlens.models.classifier import Classifier
from convlens.preprocessing import Preprocessing


class BatchWorker(Protocol):
    """Built once per worker; called with every decoded batch (``batch.x`` is a tensor)."""

    def __call__(self, batch: Batch) -> Any: ...


class WorkerFactory:
    """Builds a job's :class:`BatchWorker`: ``function(classifier, batch, **settings)`` per batch.

    Every job that runs on an engine (the audit's pass, its causal check, the report's maps,
    reference sets, ``evaluate``, ``convlens explain``) keeps only its per-batch function;
    this class is the rest, once. It is picklable when ``function`` is defined at the top
    level of a module and ``settings`` are picklable, so a Ray actor unpickles its own copy
    of the classifier: the model is loaded once per worker, not once per batch.

    Args:
        function: A module-level function ``function(classifier, batch, **settings)``
            returning the unit's result (anything picklable; None is "nothing").
        classifier: The model; the engine decodes with its preprocessing, and it is moved
            to the worker's device in :meth:`build`.
        settings: Keyword arguments of ``function``, the same for every batch.

    Example:
        >>> factory = WorkerFactory(count_items, classifier, scale=2)   # doctest: +SKIP
        >>> worker = factory.build()            # count_items(classifier, batch, scale=2)
    """

    def __init__(self, function: Callable[..., Any], classifier: Classifier, /,
                 **settings: Any) -> None:
        self.function = function
        self.classifier = classifier
        self.settings = settings

    def __repr__(self) -> str:
        name = getattr(self.function, "__qualname__", repr(self.function))
        return f"WorkerFactory({name}, settings={sorted(self.settings)})"

    def build(self, device: str | None = None) -> BatchWorker:
        """The worker of one process. ``device`` is where it should compute (``"cuda"`` on an
        actor that was given a GPU), or ``None`` to keep the model where it is."""
        if device is not None:
            self.classifier.to(device)
        return partial(self.function, self.classifier, **self.settings)


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
    """Runs a worker over the units of a list of entries.

    ``factory`` is a :class:`WorkerFactory`, or anything with its ``build(device)``.
    """

    name: str

    def map_units(self, entries: Sequence[Entry], preprocessing: Preprocessing,
                  factory: WorkerFactory, *, batch_size: int, salt: str = "",
                  skip: Collection[str] = frozenset(), max_pixels: int | None = None
                  ) -> Iterator[UnitResult]:
        """Yield one :class:`UnitResult` per unit, in any order."""
        ...


def in_unit_order(results: Iterable[UnitResult]) -> Iterator[UnitResult]:
    """``results`` (an engine's, in any order) in unit order, each as soon as every unit
    before it has arrived: for a job whose files depend on the order (``convlens explain``
    appends one store shard per unit). Holds only the units that arrived early."""
    waiting: dict[int, UnitResult] = {}
    following = 0
    for result in results:
        waiting[result.unit] = result
        while following in waiting:
            yield waiting.pop(following)
            following += 1
    for unit in sorted(waiting):  # units an engine never yielded leave gaps: not waited for
        yield waiting[unit]
