"""The whole correction written as one folder: what ``convlens correct`` does, as one call.

:func:`correct_to_folder` claims the output folder, corrects the model (:func:`~convlens.
correction.run.correct`), saves it as a folder every command loads (``folder.py``), drops a
finished run's checkpoint, lists the images to relabel, remove or augment (``guidance.py``),
measures what the correction did (``evidence.py``) and draws the page to decide on
(``report.py``). The command line only parses its options, calls this and prints the result.

``METHODS``, ``SHAPES`` and ``SCOPES`` are the choices its options take (defined by
``run.py``, ``direction.py`` and ``rrclarc.py``), so a caller can check them before loading
a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convlens.correction.audits import audit_data, strategy_entry
from convlens.correction.direction import SHAPES
from convlens.correction.evidence import gather_evidence
from convlens.correction.folder import model_source, save_correction
from convlens.correction.guidance import audit_rows, training_rows, write_guidance
from convlens.correction.report import write_correction_report
from convlens.correction.rrclarc import SCOPES
from convlens.correction.run import METHODS, Correction, correct
from convlens.correction.training import Checkpoint
from convlens.files import claim_output
from convlens.models.classifier import Classifier
from convlens.progress import ProgressCallback

__all__ = ["METHODS", "SCOPES", "SHAPES", "CorrectedFolder", "correct_to_folder"]


@dataclass
class CorrectedFolder:
    """What :func:`correct_to_folder` wrote.

    Attributes:
        correction: The correction itself (:class:`~convlens.correction.run.Correction`).
        out: The folder: ``--model OUT`` loads the corrected model.
        guidance: ``OUT/guidance.csv``; ``guidance_rows`` the images it lists.
        evidence: What ``OUT/correction.json`` holds (accuracy, artefact test, re-audit).
        page: ``OUT/report.html``.
    """

    correction: Correction
    out: Path
    guidance: Path
    guidance_rows: int
    evidence: dict[str, Any]
    page: Path


def correct_to_folder(classifier: Classifier, audit: str | os.PathLike[str], strategy: int,
                      out: str | os.PathLike[str], *, source: dict[str, Any],
                      method: str = "pclarc", layer: str | None = None, shape: str = "map",
                      data: str | os.PathLike[str] | None = None, epochs: int = 10,
                      strength: float = 10.0, learning_rate: float = 1e-3,
                      scope: str = "linear", seed: int = 0, batch_size: int = 64,
                      train: str | os.PathLike[str] | None = None, overwrite: bool = False,
                      progress: ProgressCallback | None = None) -> CorrectedFolder:
    """Correct ``classifier`` for strategy ``strategy`` of the audit folder ``audit`` and
    write the corrected model, its guidance, its evidence and its page into ``out``.

    Args:
        classifier: The audited Classifier (never changed).
        audit: The folder ``convlens audit`` / ``cl.audit(out=...)`` wrote.
        strategy: The strategy's id (1 = the most suspicious).
        out: The corrected model's folder (claimed: new, empty or convlens's).
        source: How the original model was loaded: ``{"model", "weights", "trust_model"}``
            as given to :func:`convlens.load_model`; the folder's card records it.
        method, layer, shape, data, epochs, strength, learning_rate, scope, seed,
            batch_size: :func:`~convlens.correction.run.correct`'s (a killed rrclarc run
            resumes from its checkpoint in ``out``).
        train: Training images: those furthest along the direction join guidance.csv
            (default: ``data`` when given).
        overwrite: Replace a corrected model convlens wrote in ``out``.
        progress: Called with the training's progress events.

    Returns:
        A :class:`CorrectedFolder`.

    Raises:
        CorrectionError, MethodError, OutputError: as :func:`~convlens.correction.run.
            correct` and :func:`convlens.files.claim_output` raise them.
    """
    inputs = [audit, *(p for p in (data, train) if p is not None)]
    folder = Path(os.fspath(out))
    with claim_output(folder, overwrite=overwrite, inputs=inputs, what="convlens correct"):
        fixed = correct(classifier, audit, strategy, method=method, layer=layer, shape=shape,
                        data=data, epochs=epochs, strength=strength,
                        learning_rate=learning_rate, scope=scope, seed=seed,
                        batch_size=batch_size, checkpoint=folder, progress=progress)
        save_correction(fixed, folder, source=model_source(**source), audit=audit)
        Checkpoint(folder, "").remove()
        content, _ = audit_data(audit)
        rows = audit_rows(content, strategy_entry(content, strategy))
        if train is not None or data is not None:
            rows += training_rows(classifier, fixed.direction, train or data,
                                  batch_size=batch_size, shape=shape)
        guidance = write_guidance(folder / "guidance.csv", rows)
        evidence = gather_evidence(classifier, fixed.classifier, audit, strategy, out=folder,
                                   seed=seed, report=True)
        page = write_correction_report(folder)
    return CorrectedFolder(fixed, folder, guidance, len(rows), evidence, page)
