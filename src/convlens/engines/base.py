"""What an engine is: the :class:`Engine` and :class:`WorkerFactory` protocols, :class:`UnitResult`.

A leaf of the engines package: the engine modules (``local.py``, ``ray.py``) and the callers
import these types from here or from ``convlens.engines``, which re-exports them
(docs/architecture.md, "Engines").
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from convlens.io.datasets import Batch, Entry
from convlens.preprocessing import Preprocessing


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
