"""Correlation-based faithfulness: faithfulness correlation (Bhatt, Weller, Moura 2020,
"Evaluating and Aggregating Feature-based Model Explanations", IJCAI) and MuFidelity (the same
idea on a coarse grid, as implemented in Xplique, Fel et al.).

Both remove random subsets of the input, record the drop of the explained class's score,
``f(x) - f(x with the subset at the baseline)``, and correlate it (Pearson, over the random
subsets) with the attribution mass the map puts on the subset. A map that is exactly the
model's contributions, like ``w * x`` for a linear model and a zero baseline, scores 1.

Faithfulness correlation removes ``subset`` random *pixels* (all channels at once), ``runs``
times per image (Quantus's defaults: 224 features, 100 runs; Quantus draws single channel
elements of a pixel independently: the same when the input has one channel, which is how the
tests compare the two). MuFidelity keeps each cell of a ``grid`` x ``grid`` partition with
probability ``1 - subset`` (Xplique: grid 9, 20 % removed, 200 samples, the same masks for
every image), upsampled to the image by nearest neighbour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convlens.attribution.targets import TargetLike
from convlens.metrics.core import (
    CONSTANT,
    Scores,
    check_choice,
    check_positive,
    class_scores,
    constant_rows,
    finish,
    generator_for,
    pearson,
    pixel_maps,
    prepare_x,
    register_metric,
    resolve,
    spearman,
    unwrap,
)

BHATT = ("Bhatt, Weller, Moura. Evaluating and Aggregating Feature-based Model Explanations. "
         "IJCAI 2020")
XPLIQUE = ("Bhatt et al. 2020, grid form of Xplique's MuFidelity (Fel, Hervier, Vigouroux et al. "
           "Xplique: A Deep Learning Explainability Toolbox, 2022)")


def random_subsets(generator: torch.Generator, rows: int, pixels: int, size: int
                   ) -> torch.Tensor:
    """``rows`` random subsets of ``size`` distinct pixel indices, ``(rows, size)`` on the CPU."""
    return torch.rand(rows, pixels, generator=generator).topk(size, dim=1).indices


def _correlate(a: torch.Tensor, b: torch.Tensor, similarity: str) -> torch.Tensor:
    return pearson(a, b) if similarity == "pearson" else spearman(a, b)


@register_metric("faithfulness_correlation", family="faithfulness", needs="maps",
                 reference=BHATT, summary="correlation between the attribution of random pixel "
                 "subsets and the score drop when they are removed (higher is better)",
                 higher_is_better=True)
def faithfulness_correlation(model: nn.Module, x: torch.Tensor, maps: object,
                             target: TargetLike = None, *, runs: int = 100, subset: int = 224,
                             baseline: float = 0.0, output: str = "logit",
                             similarity: str = "pearson", seed: int = 0,
                             batch_size: int | None = None
                             ) -> Scores:
    """Faithfulness correlation per image (Bhatt et al. 2020).

    Args:
        model: ``nn.Module`` or Classifier.
        x: Preprocessed images ``(N, C, H, W)``.
        maps: Attribution maps.
        target: The explained class (default: each image's prediction).
        runs: Random subsets per image.
        subset: Pixels per subset.
        baseline: The value removed pixels take (input units).
        output: ``"logit"`` (Quantus's default) or ``"probability"``.
        similarity: ``"pearson"`` (the paper) or ``"spearman"``.
        seed: Seed of the subsets.
        batch_size: Perturbed copies forwarded at once; ``None``: by device
            (:func:`~convlens.metrics.core.default_batch_size`).
    """
    check_positive("runs", runs)
    check_choice("similarity", similarity, ("pearson", "spearman"))
    options = dict(runs=runs, subset=subset, baseline=baseline, output=output,
                   similarity=similarity, seed=seed, batch_size=batch_size)
    module, labels = unwrap(model)
    x = prepare_x(module, x)
    flat = pixel_maps(maps, x).flatten(1)
    n, _, height, width = x.shape
    check_positive("subset", subset, upper=height * width - 1)
    logits, classes = resolve(module, x, target, labels)
    subsets = random_subsets(generator_for(seed, x.device), runs * n, height * width,
                             subset).to(x.device)  # row r * n + i: run r of image i
    fill = torch.tensor(float(baseline), dtype=x.dtype, device=x.device)

    def make_batch(first: int, stop: int) -> torch.Tensor:
        rows = torch.arange(first, stop, device=x.device)
        mask = torch.zeros(stop - first, height * width, dtype=torch.bool, device=x.device)
        mask.scatter_(1, subsets[first:stop], True)
        return torch.where(mask.view(-1, 1, height, width), fill, x[rows % n])

    perturbed = class_scores(module, runs * n, make_batch, classes.repeat(runs), batch_size,
                             output).view(runs, n).T
    base = _read(logits, classes, output)
    drops = base[:, None] - perturbed
    sums = flat.double().gather(1, subsets.view(runs, n, subset).transpose(0, 1).reshape(
        n, runs * subset)).view(n, runs, subset).sum(2)
    values = _correlate(sums, drops, similarity)
    undefined = [CONSTANT if c else None for c in constant_rows(flat)]
    undefined = [u or ("the score never changed: no correlation defined"
                       if not bool(torch.isfinite(v)) else None)
                 for u, v in zip(undefined, values)]
    return finish("faithfulness_correlation", values, undefined, options)


def _read(logits: torch.Tensor, classes: torch.Tensor, output: str) -> torch.Tensor:
    if output == "probability":
        logits = torch.softmax(logits.double(), dim=1)
    return logits.double().gather(1, classes[:, None]).squeeze(1)


@register_metric("mufidelity", family="faithfulness", needs="maps", reference=XPLIQUE,
                 summary="correlation between the attribution of random grid cells and the "
                 "score drop when they are removed (higher is better)", higher_is_better=True)
def mufidelity(model: nn.Module, x: torch.Tensor, maps: object, target: TargetLike = None, *,
               grid: int = 9, subset: float = 0.2, samples: int = 200, baseline: float = 0.0,
               output: str = "logit", seed: int = 0, batch_size: int | None = None
               ) -> Scores:
    """MuFidelity per image (Bhatt et al. 2020 on a grid, Xplique's defaults).

    Args:
        model: ``nn.Module`` or Classifier.
        x: Preprocessed images ``(N, C, H, W)``.
        maps: Attribution maps.
        target: The explained class.
        grid: Cells per side.
        subset: Probability that a cell is removed.
        samples: Random masks (shared by all images, as in Xplique).
        baseline: Value of removed pixels.
        output: ``"logit"`` or ``"probability"``.
        seed: Seed of the masks.
        batch_size: Perturbed copies forwarded at once; ``None``: by device
            (:func:`~convlens.metrics.core.default_batch_size`).
    """
    check_positive("grid", grid)
    check_positive("samples", samples)
    check_positive("subset", subset, integer=False, upper=1.0)
    options = dict(grid=grid, subset=subset, samples=samples, baseline=baseline,
                   output=output, seed=seed, batch_size=batch_size)
    module, labels = unwrap(model)
    x = prepare_x(module, x)
    flat = pixel_maps(maps, x).flatten(1)
    n, _, height, width = x.shape
    logits, classes = resolve(module, x, target, labels)
    generator = generator_for(seed, x.device)
    keep = (torch.rand(samples, 1, grid, grid, generator=generator) > subset).to(x.dtype)
    keep = F.interpolate(keep, size=(height, width), mode="nearest").to(x.device)

    def make_batch(first: int, stop: int) -> torch.Tensor:
        rows = torch.arange(first, stop, device=x.device)
        mask = keep[rows // n]
        return x[rows % n] * mask + (1.0 - mask) * baseline

    perturbed = class_scores(module, samples * n, make_batch, classes.repeat(samples),
                             batch_size, output).view(samples, n).T
    drops = _read(logits, classes, output)[:, None] - perturbed
    sums = flat.double() @ (1.0 - keep.flatten(1).double()).T  # (n, samples)
    values = pearson(sums, drops)
    undefined = [CONSTANT if c else None for c in constant_rows(flat)]
    undefined = [u or ("the score never changed: no correlation defined"
                       if not bool(torch.isfinite(v)) else None)
                 for u, v in zip(undefined, values)]
    return finish("mufidelity", values, undefined, options)
