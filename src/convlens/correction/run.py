"""``cl.correct``: one strategy of an audit taken out of the model, by one of three methods.

Every method starts from the strategy's class-matched direction at a layer
(:mod:`convlens.correction.direction`), estimated from the audit's labelled images:

* ``pclarc`` (:mod:`~convlens.correction.pclarc`): projected out at inference, no training;
* ``rrclarc`` (:mod:`~convlens.correction.rrclarc`): a short fine-tune that penalises the
  output's gradient along it;
* ``last-layer`` (:mod:`~convlens.correction.lastlayer`): the head refitted on
  group-balanced features, with the direction's images as the minority groups.

The training methods learn from ``data`` (a labelled folder) or, by default, the audit's own
images. See docs/architecture.md, "Correction".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from convlens.correction.audits import audit_data, labelled_images, strategy_entry
from convlens.correction.direction import (
    SHAPES,
    Direction,
    class_matched_direction,
    layer_activations,
)
from convlens.correction.lastlayer import retrain_head
from convlens.correction.pclarc import project
from convlens.correction.rrclarc import fine_tune
from convlens.correction.training import Checkpoint, TrainingSet, settings_key, training_set
from convlens.errors import CorrectionError, MethodError, unknown_choice
from convlens.models.classifier import Classifier, ModelLike, as_classifier
from convlens.models.layers import resolve_layer
from convlens.progress import ProgressLike, resolve_progress

METHODS = ("pclarc", "rrclarc", "last-layer")
NAMES = {"pclarc": "P-ClArC", "rrclarc": "RR-ClArC", "last-layer": "last layer"}
FLAG_THRESHOLD = 0.5
"""An image of other data lies along the direction when its position along it, measured
from the clean images' mean (0) towards the strategy's (1), is past this."""


@dataclass
class Correction:
    """A corrected classifier and what was done to get it.

    Attributes:
        classifier: The corrected Classifier (a copy of the network).
        method: One of :data:`METHODS`.
        strategy: The audit strategy's id.
        direction: The strategy's direction (vector, reference, layer, classes used).
        shape: ``"map"`` or ``"channel"``.
        images: How many of the audit's images the direction was estimated from.
        projection: Whether the network holds a projection (``pclarc``).
        changed: Trained tensors by ``state_dict`` key (training methods), else None.
        history: What the training did (per epoch, or per alpha tried).
        data: Where the training images came from, and how many (training methods).
        notes: What the user should know about this run.
    """

    classifier: Classifier
    method: str
    strategy: int
    direction: Direction
    shape: str
    images: int
    settings: dict[str, Any] = field(default_factory=dict)
    projection: bool = False
    changed: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def estimate_direction(classifier: Classifier, rows: list[dict[str, Any]], members: set[str],
                       layer: str, shape: str, batch_size: int) -> Direction:
    """The strategy's class-matched direction at ``layer`` from the audit's labelled rows."""
    activations = torch.cat([
        layer_activations(classifier, classifier.preprocess(
            [r["file"] for r in rows[start:start + batch_size]]), layer,
            batch_size=batch_size, shape=shape)
        for start in range(0, len(rows), batch_size)])
    return class_matched_direction(activations.float(), [r["label"] for r in rows],
                                   [r["path"] in members for r in rows], layer)


def flag_along_direction(classifier: Classifier, direction: Direction, data: TrainingSet,
                         shape: str, batch_size: int) -> torch.Tensor:
    """Which images of ``data`` lie along the strategy's direction (see
    :data:`FLAG_THRESHOLD`)."""
    scores = []
    for start in range(0, len(data), batch_size):
        x = data.images(classifier, range(start, min(start + batch_size, len(data))))
        scores.append(direction.position(layer_activations(
            classifier, x, direction.layer, batch_size=batch_size, shape=shape)))
    return torch.cat(scores) > FLAG_THRESHOLD


def correct(classifier: ModelLike, audit: Any, strategy: int = 1, *, method: str = "pclarc",
            layer: str | None = None, shape: str = "map",
            data: str | os.PathLike[str] | None = None, epochs: int = 10,
            strength: float = 10.0, learning_rate: float = 1e-3, scope: str = "linear",
            seed: int = 0, batch_size: int = 64,
            checkpoint: str | os.PathLike[str] | None = None,
            progress: ProgressLike = None) -> Correction:
    """Correct ``classifier`` for strategy ``strategy`` of ``audit`` (an Audit or its folder).

    Args:
        classifier: The audited model (a Classifier or an ``nn.Module``); never changed.
        audit: ``cl.audit``'s result or the folder it wrote; its images are read again.
        strategy: The strategy's id (1 = the most suspicious).
        method: ``"pclarc"``, ``"rrclarc"`` or ``"last-layer"`` (see the module doc).
        layer: The direction's layer (default: the audit's, else the model's default).
        shape: ``"map"`` (the whole feature map: an artefact in a fixed place) or
            ``"channel"`` (each channel's maximum over positions: an artefact that moves).
        data: Labelled images to train on (training methods; default: the audit's).
        epochs, strength, learning_rate, scope: ``rrclarc``'s fine-tune (see
            :func:`convlens.correction.rrclarc.fine_tune`).
        seed: Seeds the shuffles, the random signs and the last layer's split.
        checkpoint: A folder for ``rrclarc``'s checkpoint: a killed run given the same
            folder and settings resumes there.
        progress: A callback given the training's events (``train`` per epoch for
            ``rrclarc``; ``features`` then ``fit`` per regularisation strength for
            ``last-layer``; none for ``pclarc``, which trains nothing), ``True`` (plain
            lines, or bars in a notebook) or ``False``/None (see
            :func:`convlens.progress.resolve_progress`).

    Raises:
        CorrectionError: unknown strategy, unlabelled images, no class with both the
            strategy's images and others, training labels the model does not know.
    """
    progress = resolve_progress(progress)
    if method not in METHODS:
        raise MethodError(unknown_choice("correction method", method, METHODS))
    if shape not in SHAPES:
        raise MethodError(unknown_choice("shape", shape, SHAPES))
    classifier = as_classifier(classifier)
    content, _folder = audit_data(audit)
    entry = strategy_entry(content, strategy)
    name, _module = resolve_layer(classifier.module,
                                  layer or content.get("layer") or classifier.default_layer())
    rows = labelled_images(content)
    members = set(entry.get("members") or [])
    direction = estimate_direction(classifier, rows, members, name, shape, batch_size)
    settings = {"layer": name, "shape": shape, "batch_size": batch_size, "seed": seed}
    result = Correction(classifier, method, strategy, direction, shape, len(rows), settings)
    title = f"{classifier.name} ({NAMES[method]}: strategy {strategy} at {name})"
    if method == "pclarc":
        result.classifier = classifier.with_module(project(classifier, direction, shape=shape),
                                                   name=title)
        result.projection = True
        return result
    images = training_set(classifier, data, rows, members)
    result.data = {"source": images.source, "images": len(images),
                   "fingerprint": settings_key({"files": images.files,
                                                "targets": images.targets.tolist()})}
    if method == "rrclarc":
        settings.update(epochs=epochs, strength=strength, learning_rate=learning_rate,
                        scope=scope)
        key = settings_key({**settings, "method": method, "strategy": strategy,
                            "files": images.files, "targets": images.targets.tolist()},
                           direction.vector, *classifier.module.state_dict().values())
        trained = fine_tune(classifier, direction, images, epochs=epochs, strength=strength,
                            learning_rate=learning_rate, scope=scope,
                            batch_size=min(batch_size, 32), seed=seed,
                            checkpoint=Checkpoint(checkpoint, key), progress=progress)
    else:
        if data is not None:
            images.flagged = flag_along_direction(classifier, direction, images, shape,
                                                  batch_size)
        result.data["flagged"] = int(images.flagged.sum())
        audit_images = images if data is None else training_set(classifier, None, rows, members)
        predicted = {str(r.get("predicted")) for r in content.get("images") or []
                     if r.get("path") in members}
        labels = list(classifier.labels or [])
        trained = retrain_head(classifier, direction, images, seed=seed,
                               batch_size=batch_size, shift_from=audit_images,
                               also=[labels.index(k) for k in predicted if k in labels],
                               progress=progress)
    if not trained.changed:
        raise CorrectionError("the training changed nothing")
    result.classifier = classifier.with_module(trained.module, name=title)
    result.changed, result.history, result.notes = (trained.changed, trained.history,
                                                    trained.notes)
    if trained.resumed_from:
        result.notes.append(f"resumed from the checkpoint after epoch {trained.resumed_from}")
    return result
