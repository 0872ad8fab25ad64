"""``correct(..., method="last-layer")``: the head retrained on group-balanced features (DFR).

Deep Feature Reweighting (Kirichenko et al. 2023) keeps the feature extractor and refits the
last linear layer on data in which every group, class x spurious attribute, weighs the same.
Here a group is (labelled class, flagged), flagged meaning the image is one of the strategy's
(the audit's members; for other ``--data``, an image that lies along the strategy's direction,
see :func:`convlens.correction.run.flag_along_direction`).

A shortcut the audit finds usually has no minority group to reweight: the artefact sits on
images of one class only, so no image of another class carries it. The missing groups are
made in feature space: the artefact's class-matched shift ``d`` of the head's input (flagged
minus unflagged mean, per class with both, averaged; estimated on the audit's images, where
the members and clean images of their classes are both known, as the direction is) is added
to every unflagged training image and taken from every flagged one, each keeping its label.
The refit must then classify an image the same with or without the shift. This needs no
pasting of pixels (an artefact that moves is a shift all the same), and it leaves the
evidence's paste test independent of what the head was fitted on.

The fit: the head's weights start at the model's and the loss is the group-weighted cross-
entropy plus ``alpha/2`` times the squared distance to the original weights (full-batch
L-BFGS). Only the rows of the classes the training data holds, and of the strategy's class,
are refitted: the bundled model's 1,000-class head refitted whole from 64 photos kept only
70 % of its clean predictions on the overlay case. ``alpha`` is chosen as DFR chooses its C:
fit on a seeded half of the images (with their shifted twins), keep the value of
:data:`ALPHAS` with the best worst-group accuracy on the other half (ties: the larger,
closer to the original), refit on all of them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from convlens._hooks import HookSession
from convlens.correction.direction import Direction
from convlens.correction.rrclarc import Trained
from convlens.correction.training import TrainingSet, modules_above
from convlens.errors import CorrectionError
from convlens.models.classifier import Classifier
from convlens.progress import ProgressCallback, emit

ALPHAS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)
"""Pull towards the original head's weights, tried from the strongest."""


def head_of(model: nn.Module, layer: str, sample: torch.Tensor) -> str:
    """The last ``nn.Linear`` above ``layer``, checked to give the model's output."""
    names = [n for n in modules_above(model, layer, sample)
             if isinstance(model.get_submodule(n), nn.Linear)]
    if not names:
        raise CorrectionError("no linear layer lies above the correction's layer, so there is "
                              "no head to retrain; use --method rrclarc --train above or pclarc")
    head = names[-1]
    with HookSession() as hooks, torch.no_grad():
        capture = hooks.capture(model.get_submodule(head), head)
        out = model(sample)
    if not torch.allclose(capture.output.reshape(out.shape), out, atol=1e-5):
        raise CorrectionError(f"the model's output is not its last linear layer {head!r} "
                              "(something comes after it), so the head cannot be refitted "
                              "alone; use --method rrclarc or pclarc")
    return head


@torch.no_grad()
def head_inputs(classifier: Classifier, model: nn.Module, head: str, data: TrainingSet,
                batch_size: int) -> torch.Tensor:
    """``(N, D)``: what the head receives for every training image."""
    parts = []
    with HookSession() as hooks:
        seen: list[torch.Tensor] = []
        hooks.forward_pre_hook(model.get_submodule(head),
                               lambda _m, inputs: seen.append(inputs[0].detach()))
        for x, _y, _f in data.batches(classifier, range(len(data)), batch_size):
            model(x.to(classifier.device))
            parts.append(seen.pop().flatten(1).float().cpu())
    return torch.cat(parts)


def feature_shift(features: torch.Tensor, targets: torch.Tensor, flagged: torch.Tensor
                  ) -> torch.Tensor:
    """The flagged images' class-matched mean shift of the head's input (see the module doc)."""
    shifts = [features[(targets == k) & flagged].mean(0) - features[(targets == k) & ~flagged]
              .mean(0) for k in targets.unique().tolist()
              if ((targets == k) & flagged).any() and ((targets == k) & ~flagged).any()]
    if not shifts:
        raise CorrectionError("no labelled class has both images of the strategy and images "
                              "without it in the training data, so the strategy's features "
                              "cannot be told apart from the class's; give --data with clean "
                              "images of those classes")
    return torch.stack(shifts).mean(0)


def group_weights(targets: torch.Tensor, flagged: torch.Tensor) -> torch.Tensor:
    """Every class weighs the same, and within it every (class, flagged) group; sums to 1."""
    weights = torch.zeros(len(targets))
    classes = targets.unique().tolist()
    for k in classes:
        groups = [(targets == k) & (flagged == f) for f in (False, True)]
        groups = [g for g in groups if g.any()]
        for g in groups:
            weights[g] = 1.0 / (len(classes) * len(groups) * int(g.sum()))
    return weights


def fit_head(features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
             weight0: torch.Tensor, bias0: torch.Tensor, alpha: float,
             rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-weighted cross-entropy + ``alpha/2 |(W, b) - (W0, b0)|^2``, by L-BFGS, over the
    head's ``rows`` (default all; the other classes' rows stay as they are)."""
    rows = torch.arange(len(weight0)) if rows is None else rows
    start_w, start_b = weight0.double(), bias0.double()
    weight = start_w[rows].clone().requires_grad_(True)
    bias = start_b[rows].clone().requires_grad_(True)
    x, w = features.double(), weights.double()
    optimiser = torch.optim.LBFGS([weight, bias], lr=1, max_iter=200,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = x @ start_w.index_copy(0, rows, weight).T + start_b.index_copy(0, rows, bias)
        loss = (nn.functional.cross_entropy(logits, targets, reduction="none") * w).sum()
        loss = loss + alpha / 2 * ((weight - start_w[rows]).pow(2).sum()
                                   + (bias - start_b[rows]).pow(2).sum())
        loss.backward()
        return loss

    optimiser.step(closure)
    return (start_w.index_copy(0, rows, weight.detach()).to(weight0.dtype),
            start_b.index_copy(0, rows, bias.detach()).to(bias0.dtype))


def group_accuracies(features: torch.Tensor, targets: torch.Tensor, flagged: torch.Tensor,
                     weight: torch.Tensor, bias: torch.Tensor) -> dict[str, float]:
    """Accuracy per (class, flagged) group, keyed ``"<class index>/<0|1>"``."""
    right = ((features @ weight.T.float() + bias.float()).argmax(1) == targets)
    out = {}
    for k in targets.unique().tolist():
        for f in (False, True):
            g = (targets == k) & (flagged == f)
            if g.any():
                out[f"{k}/{int(f)}"] = float(right[g].float().mean())
    return out


def _augmented(features: torch.Tensor, targets: torch.Tensor, flagged: torch.Tensor,
               shift: torch.Tensor, rows: Sequence[int]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rows`` and their shifted twins (flag flipped, label kept)."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    f, y, g = features[index], targets[index], flagged[index]
    twins = torch.where(g[:, None], f - shift, f + shift)
    return torch.cat([f, twins]), torch.cat([y, y]), torch.cat([g, ~g])


def retrain_head(classifier: Classifier, direction: Direction, data: TrainingSet, *, seed: int = 0,
                 batch_size: int = 64, alphas: Sequence[float] = ALPHAS,
                 shift_from: TrainingSet | None = None, also: Sequence[int] = (),
                 progress: ProgressCallback | None = None) -> Trained:
    """DFR with feature-space twins (see the module doc); ``classifier`` is not changed.

    ``shift_from``: the images the shift is estimated from (default ``data``): the audit's,
    where the strategy's members and clean images of their classes are both known, even when
    the training data holds the artefact on every image of a class. ``also``: classes whose
    rows are refitted though no training image has them (the strategy's class); the rows of
    the other classes without training images stay as they were (a 1,000-class head cannot
    be refitted from tens of images).
    """
    model = copy.deepcopy(classifier.module).to(classifier.device).eval()
    sample = data.images(classifier, [0]).to(classifier.device)
    head = head_of(model, direction.layer, sample)
    linear = model.get_submodule(head)
    if linear.bias is None:
        raise CorrectionError(f"the head {head!r} has no bias; last-layer refits a head with "
                              "one (use rrclarc or pclarc)")
    emit(progress, "features", 0, len(data), "the head's inputs")
    features = head_inputs(classifier, model, head, data, batch_size)
    emit(progress, "features", len(data), len(data), "the head's inputs")
    targets, flagged = data.targets, data.flagged
    if shift_from is None or shift_from is data:
        shift = feature_shift(features, targets, flagged)
    else:
        shift = feature_shift(head_inputs(classifier, model, head, shift_from, batch_size),
                              shift_from.targets, shift_from.flagged)
    weight0, bias0 = linear.weight.detach().cpu().float(), linear.bias.detach().cpu().float()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(int(seed)))
    halves = order[: len(data) // 2].tolist(), order[len(data) // 2:].tolist()
    fit_part, held = (_augmented(features, targets, flagged, shift, h) for h in halves)
    rows = torch.tensor(sorted({*targets.tolist(), *(int(k) for k in also)}), dtype=torch.long)
    history = []
    emit(progress, "fit", 0, len(alphas), "the head, per regularisation strength")
    for step, alpha in enumerate(alphas):
        weight, bias = fit_head(fit_part[0], fit_part[1], group_weights(*fit_part[1:]),
                                weight0, bias0, alpha, rows)
        groups = group_accuracies(*held, weight, bias)
        history.append({"alpha": alpha, "worst_group": round(min(groups.values()), 4),
                        "mean_group": round(sum(groups.values()) / len(groups), 4),
                        "groups": {k: round(v, 4) for k, v in groups.items()}})
        emit(progress, "fit", step + 1, len(alphas), f"alpha {alpha:g}")
    chosen = max(history, key=lambda h: (h["worst_group"], h["alpha"]))
    everything = _augmented(features, targets, flagged, shift, range(len(data)))
    weight, bias = fit_head(everything[0], everything[1], group_weights(*everything[1:]),
                            weight0, bias0, chosen["alpha"], rows)
    with torch.no_grad():
        linear.weight.copy_(weight.to(linear.weight))
        linear.bias.copy_(bias.to(linear.bias))
    history.append({"chosen_alpha": chosen["alpha"], "rows_refitted": len(rows),
                    "shift_norm": round(float(shift.norm()), 6),
                    "feature_norm": round(float(features.norm(dim=1).mean()), 6)})
    changed = {f"{head}.weight": linear.weight.detach().cpu().clone(),
               f"{head}.bias": linear.bias.detach().cpu().clone()}
    return Trained(model, changed, history)
