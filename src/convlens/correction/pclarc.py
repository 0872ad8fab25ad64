"""``correct(..., method="pclarc")``: a strategy projected out of a layer, no training.

The strategy's class-matched direction at the layer (:mod:`convlens.correction.direction`,
estimated from the audit's own images by :mod:`convlens.correction.run`) is removed from the
layer's output so that every image sits where clean images of its class sit along it
(:mod:`convlens.models.projection`). The corrected model is a copy; the user's is not touched.
"""

from __future__ import annotations

from torch import nn

from convlens.correction.direction import Direction
from convlens.models.classifier import Classifier
from convlens.models.projection import insert_projection


def project(classifier: Classifier, direction: Direction, *, shape: str = "map") -> nn.Module:
    """A copy of ``classifier``'s network with ``direction`` projected out of its layer."""
    return insert_projection(classifier.module, direction.layer, direction.vector,
                             direction.reference, pooled=shape == "channel")
