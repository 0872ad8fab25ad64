"""One resumable pass of a dataset through an engine into a results store.

The audit's pass (:func:`convlens.auditing.passes.run_pass`) and the reference sets' pass
(:func:`convlens.concepts.references.run_references_pass`) are the same loop over different
per-batch work: the engine computes the images the store does not hold yet (its
``done_keys``), this process appends each unit's ``(records, arrays)`` as it arrives, and a
run killed half-way resumes where it stopped. See docs/architecture.md, "Batch jobs and the
results store" and "Engines".
"""

from __future__ import annotations

from dataclasses import dataclass

from convlens.engines.base import Engine, WorkerFactory
from convlens.io.datasets import Dataset
from convlens.io.images import InputProblem
from convlens.preprocessing import Preprocessing
from convlens.progress import ProgressCallback, emit
from convlens.store import ResultStore

__all__ = ["StoredPass", "stream_to_store"]


@dataclass
class StoredPass:
    """What one run of a pass saw: the keys of the dataset's images (computed now or found in
    the store), its bad files, and how many records it computed."""

    keys: list[str]
    problems: list[InputProblem]
    computed: int


def stream_to_store(engine: Engine, dataset: Dataset, preprocessing: Preprocessing,
                    factory: WorkerFactory, store: ResultStore, *, batch_size: int,
                    stage: str, progress: ProgressCallback | None = None) -> StoredPass:
    """Run ``factory``'s per-batch work over every image of ``dataset`` not yet in ``store``.

    Each unit's result must be ``(records, arrays)`` (or ``None`` for a unit of bad or
    already-stored images only); it is appended to ``store`` as it arrives, so whatever the
    engine, this process is the one writer. Emits a ``stage`` event after each unit.
    """
    keys: list[str] = []
    problems: list[InputProblem] = list(dataset.problems)
    total, seen, computed = len(dataset.entries), 0, 0
    emit(progress, stage, 0, total)
    for done in engine.map_units(dataset.entries, preprocessing, factory, batch_size=batch_size,
                                 salt=store.fingerprint or "", skip=store.done_keys()):
        batch = done.batch
        keys.extend(item.key for item in batch.items)
        keys.extend(item.key for item in batch.skipped)
        problems.extend(batch.problems)
        if done.result is not None:
            records, arrays = done.result
            store.append(records, arrays)
            computed += len(records)
        seen += batch.size
        emit(progress, stage, seen, total, f"{computed} computed, {len(problems)} unreadable")
    return StoredPass(keys, problems, computed)
