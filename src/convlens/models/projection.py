"""P-ClArC: a concept direction projected out of one layer's output, at inference time.

Projective class artifact compensation (Anders et al. 2022, Finding and removing Clever Hans)
moves every activation ``h`` of a layer to where it would lie without the artefact's
component: ``h' = h - v (v . (h - z))``, with ``v`` the unit concept direction (a CAV) and
``z`` the reference point, the mean activation of images without the artefact. Along ``v``
every image then sits at the reference; across ``v`` nothing changes.

The direction is either a whole map, ``(C, H, W)``, projected from the flattened output (a
CAV of flattened activations, as TCAV fits them: an artefact in a fixed place), or one
vector over channels, ``(C,)``, for an artefact that may be anywhere. A channel vector is
read either at every position (``pooled=False``: each position projected on its own) or, as
Reveal-to-Revise's P-ClArC does, from each channel's maximum over positions
(``pooled=True``): the image's component ``v . (max_p h - z)`` is taken off every position
alike, which is the projection of the pooled vector.

:func:`insert_projection` puts the projection *after* the layer without renaming anything:
the layer's place is taken by :class:`ProjectedLayer`, a container of the original layer
(``.layer``) and the projection (``.projection``), so the layer's dotted name now names the
corrected output and every other name is unchanged; hooks on the old name see corrected
activations. The projection is a leaf with buffers only, so a state dict carries it and LRP
passes relevance through it unchanged (its rule, "pass", in
``attribution/relevance/composites.py``: the shift is one per image, along one direction, like
a normalisation). It lives in ``models/`` because a corrected model is a model:
``cl.load_model("FIXED/")`` builds it (``models/corrected.py``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from convlens.errors import LayerError
from convlens.models.layers import resolve_layer


class ConceptProjection(nn.Module):
    """``h -> h - v (v . (h - z))``: the component along ``direction`` moved to ``reference``.

    Args:
        direction: ``(C,)`` (per position) or ``(C, H, W)`` (whole map); normalised here.
        reference: Same shape as ``direction``: the clean images' mean activation (of the
            channels' maxima when ``pooled``).
        pooled: For a ``(C,)`` direction: read the component from each channel's maximum
            over positions and take it off every position alike.
    """

    def __init__(self, direction: torch.Tensor, reference: torch.Tensor, *,
                 pooled: bool = False) -> None:
        super().__init__()
        self.pooled = bool(pooled)
        direction = torch.as_tensor(direction).detach().to(torch.float32)
        reference = torch.as_tensor(reference).detach().to(direction.dtype)
        if direction.dim() not in (1, 3):
            raise LayerError(f"a concept direction is (C,) or (C, H, W), got "
                             f"{tuple(direction.shape)}")
        if reference.shape != direction.shape:
            raise LayerError(f"the reference {tuple(reference.shape)} must have the "
                             f"direction's shape {tuple(direction.shape)}")
        norm = direction.norm()
        if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
            raise LayerError("the concept direction is zero or not finite: nothing to project")
        self.register_buffer("direction", direction / norm)
        self.register_buffer("reference", reference)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        v = self.direction.to(h.dtype)
        z = self.reference.to(h.dtype)
        if v.dim() == 1:  # one channel vector, at every position
            if h.dim() < 2 or h.shape[1] != v.shape[0]:
                raise LayerError(f"the layer outputs {tuple(h.shape)}; the direction has "
                                 f"{v.shape[0]} channels")
            shape = (1, -1) + (1,) * (h.dim() - 2)
            if self.pooled and h.dim() > 2:
                peak = h.amax(dim=tuple(range(2, h.dim())), keepdim=True)
                along = ((peak - z.view(shape)) * v.view(shape)).sum(1, keepdim=True)
            else:
                along = ((h - z.view(shape)) * v.view(shape)).sum(1, keepdim=True)
            return h - along * v.view(shape)
        if tuple(h.shape[1:]) != tuple(v.shape):
            raise LayerError(f"the layer outputs {tuple(h.shape)}; the direction is a whole "
                             f"map of shape {tuple(v.shape)}")
        along = ((h - z).flatten(1) * v.flatten()).sum(1)
        return h - along.view(-1, *(1,) * v.dim()) * v

    def extra_repr(self) -> str:
        kind = ("whole map" if self.direction.dim() == 3 else
                "channel maxima" if self.pooled else "per position")
        return f"direction={tuple(self.direction.shape)} ({kind})"


class ProjectedLayer(nn.Module):
    """A layer followed by a :class:`ConceptProjection`, in the layer's place."""

    def __init__(self, layer: nn.Module, projection: ConceptProjection) -> None:
        super().__init__()
        self.layer = layer
        self.projection = projection

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        out = self.layer(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise LayerError(f"{type(self.layer).__name__} returns {type(out).__name__}; a "
                             "projection needs a layer with one tensor output")
        return self.projection(out)


def insert_projection(model: nn.Module, layer: str | nn.Module, direction: torch.Tensor,
                      reference: torch.Tensor, *, pooled: bool = False,
                      copy_model: bool = True) -> nn.Module:
    """``model`` (a deep copy, unless ``copy_model=False``) with ``layer``'s output projected.

    The projection's buffers follow the layer's device. The user's model is never changed
    when ``copy_model`` is true (the default).
    """
    name, _ = resolve_layer(model, layer)
    if not name:
        raise LayerError("the projection goes after a layer inside the model, not after the "
                         "model's output; choose a layer (see `convlens layers`)")
    target = copy.deepcopy(model) if copy_model else model
    parent_name, _, child = name.rpartition(".")
    parent = target.get_submodule(parent_name) if parent_name else target
    original = parent.get_submodule(child)
    sample = next((t for t in (*original.parameters(), *original.buffers())), None)
    projection = ConceptProjection(direction, reference, pooled=pooled)
    if sample is not None:
        projection = projection.to(sample.device)
    setattr(parent, child, ProjectedLayer(original, projection))
    return target
