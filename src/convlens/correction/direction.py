"""The direction of a strategy at a layer: what its members' activations share, class by class.

P-ClArC needs a direction ``v`` (the artefact's) and a reference ``z`` (where clean images
lie along it). Contrasting a strategy's members with *all* other images mixes the artefact
with class identity: a cross-class strategy's members are mostly images of some classes
predicted as another, so their mean differs from the rest's in what the classes look like
too. Projecting that out removes class evidence, and on the planted tag => square net it left
most of the artefact's effect in place at deeper layers (mean difference against every other
image: effect 1.00 -> 0.45 at ``features.4``, 1.00 -> 0.80 at ``features.7``; against images
of the same labelled class: 1.00 -> 0.00 at every layer, clean accuracy unchanged; seeds 0
and 1). So the direction is *class-matched*: per labelled class that has both members and
non-members, the members' mean minus the non-members' mean, averaged over those classes
(Reveal-to-Revise fits its CAVs within the affected class for the same reason). The
reference is the non-members' mean.

``shape="map"`` keeps the whole ``(C, H, W)`` map (a fixed-place artefact, such as a corner
tag, is a direction of the map); ``shape="channel"`` pools each channel over positions
(its maximum, as Reveal-to-Revise) for an artefact that moves (``(C,)``, applied at every
position by :class:`~convlens.models.projection.ConceptProjection`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from convlens._hooks import HookSession, evaluation_mode
from convlens.errors import DirectionError

SHAPES = ("map", "channel")


@dataclass
class Direction:
    """A strategy's direction at a layer.

    Attributes:
        vector: ``(C, H, W)`` or ``(C,)``, not normalised (its norm is the effect's size).
        reference: Same shape: the non-members' mean.
        layer: The layer's dotted name.
        classes: The labelled classes the contrast was taken in, with (members, others).
    """

    vector: torch.Tensor
    reference: torch.Tensor
    layer: str
    classes: dict[str, tuple[int, int]]

    def position(self, activations: torch.Tensor) -> torch.Tensor:
        """Each image's position along the direction, ``(N,)``: 0 at the reference (the clean
        images' mean), 1 at the strategy's images' mean (the vector is their difference)."""
        vector = self.vector.flatten().float().cpu()
        shifted = (activations.float().cpu() - self.reference.float().cpu()).flatten(1)
        return shifted @ vector / (float(vector @ vector) or 1.0)


def layer_activations(classifier, x: torch.Tensor, layer: str, *, batch_size: int = 64,
                      shape: str = "map") -> torch.Tensor:
    """``layer``'s output for ``x`` (preprocessed), in batches, without gradients; pooled per
    channel (maximum over positions) for ``shape="channel"``."""
    if shape not in SHAPES:
        raise DirectionError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    module = classifier.module.get_submodule(layer) if layer else classifier.module
    parts = []
    with evaluation_mode(classifier.module), HookSession() as hooks:
        capture = hooks.capture(module, layer)
        for start in range(0, len(x), batch_size):
            with torch.no_grad():
                classifier.module(x[start:start + batch_size].to(classifier.device))
            out = capture.output.detach()
            parts.append(out.amax(dim=tuple(range(2, out.dim()))) if shape == "channel"
                         and out.dim() > 2 else out)
            capture.clear()
    return torch.cat(parts)


def class_matched_direction(activations: torch.Tensor, labels: Sequence[str],
                            members: Sequence[bool], layer: str) -> Direction:
    """Per labelled class, members' mean minus others' mean, averaged; see the module doc.

    Raises:
        DirectionError: when no labelled class has both members and other images.
    """
    if len(labels) != len(activations) or len(members) != len(activations):
        raise DirectionError("labels, members and activations must have one entry per image")
    flags = torch.as_tensor(list(members), dtype=torch.bool)
    differences, used = [], {}
    for name in sorted({str(k) for k in labels if k is not None}):
        in_class = torch.as_tensor([str(k) == name for k in labels], dtype=torch.bool)
        inside, outside = in_class & flags, in_class & ~flags
        if inside.any() and outside.any():
            differences.append(activations[inside].mean(0) - activations[outside].mean(0))
            used[name] = (int(inside.sum()), int(outside.sum()))
    if not differences:
        raise DirectionError(
            "no labelled class has both images of the strategy and images outside it, so "
            "the artefact cannot be told apart from what the classes look like; audit "
            "labelled data (ImageFolder or CSV) that includes clean images of those classes")
    reference = activations[~flags].mean(0) if (~flags).any() else activations.mean(0)
    return Direction(torch.stack(differences).mean(0), reference, layer, used)
