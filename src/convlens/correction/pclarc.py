"""``correct(..., method="pclarc")``: a strategy the audit found, projected out of a layer.

No training: the strategy's class-matched direction at the layer
(:mod:`convlens.correction.direction`) is estimated from the audit's own images, and the
layer's output is projected so that every image sits where clean images of its class sit
along it (:mod:`convlens.models.projection`). The corrected model is a copy; the
user's is not touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convlens.correction.direction import (
    SHAPES,
    Direction,
    DirectionError,
    class_matched_direction,
    layer_activations,
)
from convlens.models.layers import resolve_layer
from convlens.models.projection import insert_projection

METHODS = ("pclarc",)


@dataclass
class Correction:
    """A corrected classifier and what was done to get it.

    Attributes:
        classifier: The corrected Classifier (a copy of the network with the projection).
        method: ``"pclarc"``.
        strategy: The audit strategy's id.
        direction: The direction projected out (vector, reference, layer, classes used).
        shape: ``"map"`` or ``"channel"``.
        images: How many of the audit's images the direction was estimated from.
    """

    classifier: Any
    method: str
    strategy: int
    direction: Direction
    shape: str
    images: int
    settings: dict[str, Any] = field(default_factory=dict)


def audit_data(audit: Any) -> tuple[dict[str, Any], Path]:
    """``audit.json``'s content and the audit's folder, from an Audit or its folder."""
    from convlens.auditing.run import Audit

    if isinstance(audit, Audit):
        return audit.data, audit.out
    folder = Path(os.fspath(audit))
    found = Audit(None, folder)
    if not (folder / "audit.json").is_file():
        raise DirectionError(f"{folder} holds no audit.json; give the folder `convlens audit` "
                             "wrote (--out), or the Audit object cl.audit returned")
    return found.data, folder


def strategy_entry(data: dict[str, Any], strategy: int) -> dict[str, Any]:
    """Strategy ``strategy`` of ``audit.json``; an unknown id lists the known ones."""
    for entry in data.get("strategies") or []:
        if entry.get("id") == strategy:
            return entry
    ids = ", ".join(str(e.get("id")) for e in data.get("strategies") or []) or "none"
    raise DirectionError(f"the audit has no strategy {strategy!r}; its strategies: {ids}")


def correct(classifier: Any, audit: Any, strategy: int = 1, *, method: str = "pclarc",
            layer: str | None = None, shape: str = "map", batch_size: int = 64) -> Correction:
    """Correct ``classifier`` for strategy ``strategy`` of ``audit`` (an Audit or its folder).

    Args:
        classifier: The audited model (a Classifier or an ``nn.Module``).
        audit: ``cl.audit``'s result or the folder it wrote; its images are read again.
        strategy: The strategy's id (1 = the most suspicious).
        method: ``"pclarc"`` (no training; see the module doc).
        layer: Where to project (default: the audit's layer, else the model's default layer).
        shape: ``"map"`` (the whole feature map: an artefact in a fixed place) or
            ``"channel"`` (each channel's maximum over positions: an artefact that moves).

    Raises:
        DirectionError: unknown strategy, unlabelled images, no class with both members
            and other images.
    """
    from convlens.errors import MethodError, unknown_choice
    from convlens.models.classifier import as_classifier

    if method not in METHODS:
        raise MethodError(unknown_choice("correction method", method, METHODS))
    if shape not in SHAPES:
        raise MethodError(unknown_choice("shape", shape, SHAPES))
    classifier = as_classifier(classifier)
    data, _folder = audit_data(audit)
    entry = strategy_entry(data, strategy)
    name = layer or data.get("layer") or classifier.default_layer()
    name, _module = resolve_layer(classifier.module, name)
    root = Path(data.get("data") or ".")
    base = root if root.is_dir() else root.parent
    members = set(entry.get("members") or [])
    rows = [image for image in data["images"] if image.get("label") is not None]
    if not rows:
        raise DirectionError("the audit's images have no labels; P-ClArC contrasts a "
                             "strategy's images with clean images of the same classes")
    activations = torch.cat([
        layer_activations(classifier, classifier.preprocess(
            [str(base / r["path"]) for r in rows[start:start + batch_size]]), name,
            batch_size=batch_size, shape=shape)
        for start in range(0, len(rows), batch_size)])
    direction = class_matched_direction(activations.float(), [r["label"] for r in rows],
                                        [r["path"] in members for r in rows], name)
    module = insert_projection(classifier.module, name, direction.vector, direction.reference,
                               pooled=shape == "channel")
    fixed = classifier.with_module(
        module, name=f"{classifier.name} (P-ClArC: strategy {strategy} at {name})")
    return Correction(fixed, method, strategy, direction, shape, len(rows),
                      {"layer": name, "shape": shape, "batch_size": batch_size})
