"""The local engine: decoding in DataLoader processes, the worker in this process."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import replace

from convlens.engines.base import UnitResult, WorkerFactory
from convlens.engines.registry import register_engine
from convlens.io.datasets import Entry, batches
from convlens.preprocessing import Preprocessing


@register_engine("local")
class LocalEngine:
    """Runs every unit in this process, in order; ``workers`` decoding processes.

    The worker is built once (on the model's own device) and sees the batches that
    :func:`convlens.io.datasets.batches` yields: one per ``batch_size`` entries.
    """

    name = "local"

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers

    def __repr__(self) -> str:
        return f"LocalEngine(workers={self.workers})"

    def map_units(self, entries: Sequence[Entry], preprocessing: Preprocessing,
                  factory: WorkerFactory, *, batch_size: int, salt: str = "",
                  skip: Collection[str] = frozenset(), max_pixels: int | None = None
                  ) -> Iterator[UnitResult]:
        worker = None
        for unit, batch in enumerate(batches(entries, preprocessing, batch_size=batch_size,
                                             workers=self.workers, salt=salt, skip=skip,
                                             keep_images=False, max_pixels=max_pixels)):
            result = None
            if batch.x is not None:
                worker = worker or factory.build(None)
                result = worker(batch)
            yield UnitResult(unit, replace(batch, x=None), result)
