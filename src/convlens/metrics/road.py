"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci 2022, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods", ICML).

Removing pixels by setting them to a constant leaks the shape of the removed region to the
model (the mask itself becomes a feature). ROAD instead *imputes* removed pixels with noisy
linear imputation: each removed pixel is the weighted mean of its 8 neighbours (weight 1/6
for the 4 direct ones, 1/12 for the diagonals; neighbours outside the image are left out),
solved jointly for all removed pixels of a channel, plus Gaussian noise (std ``noise``, in
the model's input units). Both orders are measured: MoRF (most relevant first; a good map
makes the accuracy and probability fall fast) and LeRF (least relevant first; they should
stay high), at each removal percentage.

Accuracy here is whether the model still predicts the explained class (the target; with
the default target, its own prediction on the unperturbed image). The per-image summary
score is ours: the mean over percentages of LeRF probability minus MoRF probability
(higher is better; with ``order="morf"`` alone it is minus the mean MoRF probability, with
``"lerf"`` the mean LeRF probability); the curves are kept for plots.

The linear system is solved by conjugate gradients, batched over images, percentages,
orders and channels on the model's device (the reference code and Quantus build one sparse
matrix per image and call ``scipy.sparse.linalg.spsolve``); tests check the imputation
against Quantus's ``noisy_linear_imputation`` to 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens._hooks import evaluation_mode
from convlens.attribution.targets import TargetLike
from convlens.metrics.core import (
    CONSTANT,
    MetricError,
    Scores,
    _forward,
    check_choice,
    check_positive,
    chunks,
    constant_rows,
    descending_ranks,
    finish,
    generator_for,
    pixel_maps,
    prepare_x,
    register_metric,
    resolve,
    unwrap,
)

REFERENCE = ("Rong, Leemann, Borisov, Kasneci, Kasneci. A Consistent and Efficient Evaluation "
             "Strategy for Attribution Methods. ICML 2022")

_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def linear_imputation(x: torch.Tensor, removed: torch.Tensor, tol: float = 1e-6,
                      max_iter: int = 5000) -> torch.Tensor:
    """Impute ``removed`` pixels of ``x`` (B, C, H, W) from their neighbours, no noise.

    Solves, per image and channel, ``d_i v_i - sum_{j removed} w_ij v_j = sum_{j kept} w_ij
    x_j`` for every removed pixel i (d_i = the weights of its in-image neighbours), the
    system of the ROAD reference code, by conjugate gradients (the matrix is a weighted graph
    Laplacian restricted to the removed pixels: symmetric positive definite whenever every
    removed region touches a kept pixel).

    Args:
        x: Images ``(B, C, H, W)``.
        removed: Boolean ``(B, 1, H, W)``, True where a pixel is imputed.
        tol: Relative residual at which to stop.
        max_iter: The most iterations.
    """
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    b_, c_, h_, w_ = x.shape
    u = removed.to(work).expand(b_, c_, h_, w_).reshape(b_ * c_, 1, h_, w_)
    kept = 1.0 - u
    values = x.to(work).reshape(b_ * c_, 1, h_, w_)
    kernel = torch.tensor(_WEIGHTS, dtype=work, device=x.device).view(1, 1, 3, 3)

    def neighbours(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, kernel, padding=1)

    degree = neighbours(torch.ones(1, 1, h_, w_, dtype=work, device=x.device))

    def apply(v: torch.Tensor) -> torch.Tensor:
        return u * (degree * v - neighbours(u * v))

    rhs = u * neighbours(kept * values)
    v = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = r.square().sum(dim=(1, 2, 3))
    target = (tol ** 2) * rhs.square().sum(dim=(1, 2, 3)).clamp_min(1e-30)
    for iteration in range(max_iter):
        ap = apply(p)
        alpha = rr / (p * ap).sum(dim=(1, 2, 3)).clamp_min(1e-30)
        v = v + alpha.view(-1, 1, 1, 1) * p
        r = r - alpha.view(-1, 1, 1, 1) * ap
        rr_new = r.square().sum(dim=(1, 2, 3))
        if iteration % 16 == 15 and bool((rr_new <= target).all()):
            break
        p = r + (rr_new / rr.clamp_min(1e-30)).view(-1, 1, 1, 1) * p
        rr = rr_new
    imputed = kept * values + u * v
    return imputed.view(b_, c_, h_, w_).to(x.dtype)


@register_metric("road", family="faithfulness", needs="maps", reference=REFERENCE,
                 summary="accuracy and probability as pixels are removed and imputed, most and "
                         "least relevant first; score = mean LeRF - MoRF probability (higher is "
                         "better)", higher_is_better=True)
def road(model: nn.Module, x: torch.Tensor, maps: object, target: TargetLike = None, *,
         percentages: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
         order: str = "both", noise: float = 0.01, seed: int = 0, batch_size: int = 64
         ) -> Scores:
    """ROAD curves per image (Rong et al. 2022).

    Args:
        model: ``nn.Module`` or Classifier.
        x: Preprocessed images ``(N, C, H, W)``.
        maps: Attribution maps.
        target: The explained class (default: each image's prediction).
        percentages: Percent of pixels removed at each point (0 < p < 100).
        order: ``"morf"``, ``"lerf"`` or ``"both"``.
        noise: Standard deviation of the noise added to imputed pixels.
        seed: Seed of that noise.
        batch_size: Imputed images forwarded (and imputed) at once.
    """
    check_choice("order", order, ("morf", "lerf", "both"))
    check_positive("batch_size", batch_size)
    percentages = [float(p) for p in percentages]
    if not percentages or any(not 0 < p < 100 for p in percentages):
        raise MetricError(f"option percentages must be numbers strictly between 0 and 100, got "
                          f"{percentages!r}")
    if not isinstance(noise, (int, float)) or noise < 0:
        raise MetricError(f"option noise must be a number >= 0, got {noise!r}")
    options = dict(percentages=list(percentages), order=order, noise=noise, seed=seed,
                   batch_size=batch_size)
    module, labels = unwrap(model)
    x = prepare_x(module, x)
    flat = pixel_maps(maps, x).flatten(1)
    _, classes = resolve(module, x, target, labels)
    n, _, height, width = x.shape
    pixels = height * width
    ranks = descending_ranks(flat).view(n, 1, height, width)
    orders = ["morf", "lerf"] if order == "both" else [order]
    counts = torch.tensor([int(pixels * p / 100) for p in percentages], device=x.device)
    jobs = [(o, i, k) for o in range(len(orders)) for i in range(n)
            for k in range(len(percentages))]
    generator = generator_for(seed, x.device)
    probability = torch.empty(len(jobs), dtype=torch.float64, device=x.device)
    correct = torch.empty(len(jobs), dtype=torch.float64, device=x.device)
    with evaluation_mode(module), torch.no_grad():
        for first, stop in chunks(len(jobs), batch_size):
            part = jobs[first:stop]
            image = torch.tensor([j[1] for j in part], device=x.device)
            count = counts[[j[2] for j in part]].view(-1, 1, 1, 1)
            lerf = torch.tensor([orders[j[0]] == "lerf" for j in part],
                                device=x.device).view(-1, 1, 1, 1)
            r = ranks[image]
            removed = torch.where(lerf, r >= pixels - count, r < count)
            imputed = linear_imputation(x[image], removed)
            if noise:
                draw = torch.randn(imputed.shape, generator=generator, dtype=torch.float64)
                imputed = imputed + removed * (noise * draw).to(imputed)
            logits = _forward(module, imputed)
            probs = torch.softmax(logits.double(), dim=1)
            cls = classes[image]
            probability[first:stop] = probs.gather(1, cls[:, None]).squeeze(1)
            correct[first:stop] = (logits.argmax(1) == cls).double()
    shape = (len(orders), n, len(percentages))
    probability, correct = probability.view(shape).cpu(), correct.view(shape).cpu()
    curves = {}
    for index, name in enumerate(orders):
        curves[f"{name}_probability"] = probability[index].numpy()
        curves[f"{name}_accuracy"] = correct[index].numpy()
    if order == "both":
        values = (probability[1] - probability[0]).mean(1)
    elif order == "morf":
        values = -probability[0].mean(1)
    else:
        values = probability[0].mean(1)
    undefined = [CONSTANT if c else None for c in constant_rows(flat)]
    return finish("road", values, undefined, options, curves=curves,
                  curve_x=np.asarray(percentages), curve_label="percent of pixels removed")
