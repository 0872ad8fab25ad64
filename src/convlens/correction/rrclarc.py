"""``correct(..., method="rrclarc")``: Right-Reason ClArC, a short fine-tune that makes the
model's output insensitive to the strategy's direction.

The loss is the class-weighted cross-entropy plus a penalty on the gradient's alignment with
the direction (Dreyer, Pahde et al. 2024): for each image, ``g = d(sum_k s_k f_k)/dA`` at the
layer's output ``A``, with a fresh random sign ``s_k`` per class and step (in expectation this
penalises every class's sensitivity at the cost of one backward), and the penalty is
``mean (g . v)^2`` with ``v`` the unit direction (for ``shape="channel"``, ``g`` is averaged
over positions first, as the released code's "l2_mean").

What trains: the linear layers above the layer (``scope="linear"``, as RR-ClArC's release),
or every linear and convolution above it (``"above"``); norms stay frozen and the network
runs in eval mode. The penalty's weight is given relative to the first batch: ``strength``
times the ratio of the cross-entropy to the penalty there, so ``strength=1`` starts both
terms equal whatever the model's scale (the authors sweep an absolute lambda per dataset
over nine orders of magnitude instead). Adam, seeded shuffles and signs, a checkpoint after
every epoch (:class:`~convlens.correction.training.Checkpoint`): a killed run resumes to the
same weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from convlens._hooks import HookSession
from convlens.correction.direction import Direction
from convlens.correction.training import (
    Checkpoint,
    TrainingSet,
    modules_above,
    trainable_parameters,
)
from convlens.errors import CorrectionError
from convlens.models.classifier import Classifier
from convlens.progress import ProgressCallback, emit

SCOPES = ("linear", "above")


@dataclass
class Trained:
    """A fine-tuned copy of the network and what changed.

    Attributes:
        module: The fine-tuned copy (the user's network is untouched).
        changed: The trained tensors by their ``state_dict`` key (what the folder stores).
        history: Per epoch: cross-entropy, penalty (alignment), accuracy on the training set.
        notes: What the user should know (a restarted checkpoint, an unreachable direction).
    """

    module: nn.Module
    changed: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    notes: list[str] = field(default_factory=list)
    resumed_from: int = 0


def class_weights(targets: torch.Tensor, classes: int) -> torch.Tensor:
    """Inverse-frequency weights of the classes present (1 for the others), mean 1 over
    the training images."""
    counts = torch.bincount(targets, minlength=classes).float()
    weights = torch.ones(classes)
    present = counts > 0
    weights[present] = len(targets) / (int(present.sum()) * counts[present])
    return weights


def _alignment(logits: torch.Tensor, activation: torch.Tensor, unit: torch.Tensor,
               generator: torch.Generator) -> torch.Tensor:
    """Per image, the random-signed output's gradient at the layer, along ``unit``."""
    signs = torch.randint(0, 2, logits.shape, generator=generator).to(logits) * 2 - 1
    (grad,) = torch.autograd.grad((logits * signs).sum(), activation, create_graph=True)
    if unit.dim() == 1 and grad.dim() > 2:  # channel direction: the positions' mean
        grad = grad.mean(dim=tuple(range(2, grad.dim())))
    return grad.flatten(1) @ unit.flatten().to(grad)


def fine_tune(classifier: Classifier, direction: Direction, data: TrainingSet, *, epochs: int = 10,
              strength: float = 10.0, learning_rate: float = 1e-3, scope: str = "linear",
              batch_size: int = 32, seed: int = 0, checkpoint: Checkpoint | None = None,
              progress: ProgressCallback | None = None) -> Trained:
    """RR-ClArC on ``data`` (see the module doc); ``classifier`` is not changed."""
    if scope not in SCOPES:
        raise CorrectionError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if epochs < 1 or strength < 0 or learning_rate <= 0:
        raise CorrectionError("epochs must be >= 1, strength >= 0 and the learning rate > 0")
    device = classifier.device
    model = copy.deepcopy(classifier.module).to(device).eval()
    flags = {key: p.requires_grad for key, p in model.named_parameters()}
    sample = data.images(classifier, [0]).to(device)
    names = modules_above(model, direction.layer, sample)
    chosen = trainable_parameters(model, names, scope)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in chosen.values():
        p.requires_grad_(True)
    unit = (direction.vector / direction.vector.norm()).float().to(device)
    labels = len(classifier.labels or []) or int(classifier.logits(sample).shape[1])
    weights = class_weights(data.targets, labels).to(device)
    optimiser = torch.optim.Adam(list(chosen.values()), lr=learning_rate)
    generator = torch.Generator().manual_seed(int(seed))
    history: list[dict[str, float]] = []
    scale, start, notes = None, 0, []
    state = checkpoint.load() if checkpoint is not None else None
    if checkpoint is not None and checkpoint.note:
        notes.append(checkpoint.note)
    if state is not None:
        with torch.no_grad():
            for key, p in chosen.items():
                p.copy_(state["params"][key].to(device))
        optimiser.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        history, scale, start = list(state["history"]), state["scale"], int(state["epoch"])
    module = model.get_submodule(direction.layer)
    emit(progress, "train", start, epochs, f"epoch {start + 1} of {epochs}")
    for epoch in range(start, epochs):
        order = torch.randperm(len(data), generator=generator).tolist()
        totals = {"cross_entropy": 0.0, "alignment": 0.0, "right": 0.0}
        for x, y, _flagged in data.batches(classifier, order, batch_size):
            x, y = x.to(device), y.to(device)
            with HookSession() as hooks:
                capture = hooks.capture(module, direction.layer, cut_graph=True,
                                        grad_from_here=True)
                with torch.no_grad():
                    logits = model(x)
            activation = capture.output
            cross_entropy = nn.functional.cross_entropy(logits, y, weight=weights)
            along = _alignment(logits, activation, unit, generator)
            penalty = (along ** 2).mean()
            if scale is None:
                ratio = float(cross_entropy.detach()) / max(float(penalty.detach()), 1e-30)
                scale = ratio if float(penalty.detach()) > 0 else 0.0
                if scale == 0.0:
                    notes.append("the output does not depend on the direction at this layer "
                                 "(zero gradient along it); the penalty had nothing to do")
            loss = cross_entropy + strength * scale * penalty
            optimiser.zero_grad(set_to_none=True)
            loss.backward(inputs=list(chosen.values()))
            optimiser.step()
            totals["cross_entropy"] += float(cross_entropy.detach()) * len(x)
            totals["alignment"] += float(penalty.detach()) * len(x)
            totals["right"] += float((logits.argmax(1) == y).sum())
        history.append({"epoch": epoch + 1,
                        **{k: round(v / len(data), 6) for k, v in totals.items()
                           if k != "right"},
                        "accuracy": round(totals["right"] / len(data), 4)})
        if checkpoint is not None:
            checkpoint.save({"epoch": epoch + 1, "optimizer": optimiser.state_dict(),
                             "params": {k: p.detach().cpu().clone() for k, p in chosen.items()},
                             "generator": generator.get_state(), "history": history,
                             "scale": scale})
        emit(progress, "train", epoch + 1, epochs,
             f"epoch {epoch + 1}: alignment {history[-1]['alignment']:.3g}")
    for key, p in model.named_parameters():
        p.requires_grad_(flags[key])
    changed = {key: p.detach().cpu().clone() for key, p in chosen.items()}
    return Trained(model, changed, history, notes, resumed_from=start)
