"""Coalition methods over feature groups: Shapley sampling, KernelSHAP, LIME, feature ablation.

All four play the same game: a *feature* is a group of pixels (a superpixel or a grid cell,
from :func:`convlens.attribution.superpixels.segment`, or the user's ``segments=``), a
*coalition* keeps some features and replaces the others by the baseline, and
``v(S) = y_c(x with only S kept)`` is the target's logit. The methods differ only in which
coalitions they evaluate and how they turn the values into one number per feature:

* ``shapley_sampling``: marginal contributions along random orderings (Strumbelj &
  Kononenko 2014), an unbiased estimate of the Shapley value;
* ``kernel_shap``: weighted least squares under the Shapley kernel with the efficiency
  constraint (Lundberg & Lee 2017), exact when every coalition is enumerated;
* ``lime``: a ridge regression on random coalitions, weighted by their closeness to the
  full image (Ribeiro, Singh, Guestrin 2016);
* ``feature_ablation``: the drop when one feature alone is removed.

Coalitions are evaluated under ``torch.no_grad`` in chunks of at most ``batch_size``
perturbed copies, built on ``x``'s device from a boolean ``(rows, K)`` coalition table and
the label map. Random draws come from ``torch.Generator().manual_seed(seed)`` on the CPU, in
sample order, so a seed gives the same coalitions on every device and for every
``batch_size``; the estimators' arithmetic is float64. The full and empty coalitions travel
in the same batches as the rest; the forward counts given per method add one batched
forward of x when the target is the prediction (to find it).

Output: ``(N, 1, H, W)``, each pixel holding its feature's value divided by the feature's
pixel count, so a map sums to the sum of its feature values (for the Shapley methods,
``y_c(x) - y_c(baseline)``); :func:`convlens.attribution.superpixels.feature_values`
recovers the per-feature values. Captum instead paints the whole value on every pixel of
the feature; ``captum_map = ours * segment size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from convlens.attribution.core import Problem, register
from convlens.attribution.gradients import check_batch_size, make_baseline
from convlens.attribution.superpixels import resolve_segments, spread
from convlens.errors import MethodError

_SEGMENT_OPTIONS = """
    Feature options (shared by the four methods): ``segments`` (labels ``(N, H, W)`` or
    ``(H, W)``, overriding the rest), ``segmentation`` (``"slic"``, ``"quickshift"`` or
    ``"grid"``), ``n_segments`` (SLIC, default 50), ``grid`` (cells per side, default 7);
    see :func:`convlens.attribution.superpixels.segment`, which returns the same labels.
    ``baseline``: what a removed feature's pixels become: a number (default 0, the dataset's
    mean colour under the usual normalisation), a tensor broadcastable to x (e.g. a blurred
    copy), or ``"mean"`` (each image's own mean per channel)."""


def _feature_options(fn):
    """Append the shared option text to a method's docstring (one text, four methods)."""
    fn.__doc__ = (fn.__doc__ or "") + _SEGMENT_OPTIONS
    return fn


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MethodError(f"{name} must be a positive integer, got {value!r}")
    return value


def resolve_baseline(baseline: object, x: torch.Tensor) -> torch.Tensor:
    """The fill for removed features: ``"mean"``, or what ``make_baseline`` accepts."""
    if isinstance(baseline, str):
        if baseline != "mean":
            raise MethodError(f"baseline {baseline!r} is unknown; use a number, a tensor "
                              "broadcastable to x, or 'mean' (each image's mean colour)")
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    return make_baseline(baseline, x)


@dataclass
class CoalitionGame:
    """The target's logit as a function of which features are kept, batched.

    Attributes:
        problem: The attribution problem (model, x, target).
        fill: ``(N, C, H, W)`` values of removed pixels.
        segments: ``(N, H, W)`` labels 0..K_i-1.
        counts: ``(N,)`` number of features K_i per sample.
        batch_size: Most perturbed copies per forward.
    """

    problem: Problem
    fill: torch.Tensor
    segments: torch.Tensor
    counts: list[int]
    batch_size: int

    @property
    def width(self) -> int:
        """Columns of a coalition table: the largest K_i."""
        return max(self.counts)

    def play(self, images: torch.Tensor, coalitions: torch.Tensor) -> torch.Tensor:
        """``v`` for each row: image ``images[r]`` keeping the features ``coalitions[r]``.

        Args:
            images: ``(R,)`` sample index per row.
            coalitions: ``(R, width)`` boolean, True = kept.

        Returns:
            ``(R,)`` float64 target logits, on the CPU.
        """
        x = self.problem.x
        n, _, height, width = x.shape
        flat = self.segments.reshape(n, -1)
        indices = self.problem.indices()
        out = torch.empty(images.shape[0], dtype=torch.float64)
        with torch.no_grad():
            for start in range(0, images.shape[0], self.batch_size):
                rows = slice(start, start + self.batch_size)
                chunk = images[rows].to(x.device)
                keep = coalitions[rows].to(x.device).gather(1, flat[chunk])
                inputs = torch.where(keep.view(-1, 1, height, width), x[chunk], self.fill[chunk])
                logits = self.problem.forward(inputs)
                out[rows] = logits.gather(1, indices[chunk].view(-1, 1)).squeeze(1).double().cpu()
        return out

    def play_tables(self, tables: list[torch.Tensor], full: bool = False, empty: bool = False
                    ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """Play one coalition table per sample (each ``(R_i, <= width)``) in shared batches.

        With ``full`` / ``empty``, each sample's all-kept / all-removed coalition is played in
        the same batches (no separate small forward) and returned as ``(N,)``.

        Returns:
            ``(values per sample, v(all) or None, v(none) or None)``, float64 on the CPU.
        """
        self.problem.indices()   # a forward only when the target depends on the prediction
        extra = [flag for flag in (full, empty) if flag]
        rows = [torch.cat([torch.ones(1, self.width, dtype=torch.bool)] * full
                          + [torch.zeros(1, self.width, dtype=torch.bool)] * empty
                          + [torch.nn.functional.pad(t, (0, self.width - t.shape[1]))])
                for t in tables]
        images = torch.cat([torch.full((t.shape[0],), i) for i, t in enumerate(rows)])
        values = self.play(images, torch.cat(rows)).split([t.shape[0] for t in rows])
        ends = torch.stack([v[:len(extra)] for v in values]) if extra else None
        clean = ends[:, 0] if full else None
        none = ends[:, len(extra) - 1] if empty else None
        return [v[len(extra):] for v in values], clean, none

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        """``(N, width)`` float64 feature values -> the ``(N, 1, H, W)`` map on x's device."""
        x = self.problem.x
        return spread(values.to(device=x.device, dtype=x.dtype), self.segments)


def make_game(problem: Problem, segments: object, segmentation: str, n_segments: int | None,
              grid: int | tuple[int, int] | None, baseline: object, batch_size: int
              ) -> CoalitionGame:
    """Check the shared options, resolve the target, segment, build the fill."""
    batch_size = check_batch_size(batch_size)
    x = problem.x
    fill = resolve_baseline(baseline, x)
    labels = resolve_segments(x, segments, segmentation, n_segments, grid)
    counts = [int(one.max()) + 1 for one in labels]
    return CoalitionGame(problem, fill, labels, counts, batch_size)


# ---- Shapley value sampling ------------------------------------------------------------------

@register("shapley_sampling", family="perturbation", signed=True,
          reference="Strumbelj & Kononenko 2014, Explaining prediction models and individual "
                    "predictions with feature contributions",
          summary="Shapley value of each superpixel, averaged over random orderings")
@_feature_options
def shapley_sampling(problem: Problem, *, permutations: int = 10, segments: object = None,
                     segmentation: str = "slic", n_segments: int | None = None,
                     grid: int | tuple[int, int] | None = None, baseline: object = 0.0,
                     seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """phi_k = mean over random orderings of v(before k, plus k) - v(before k).

    Each ordering adds the features one by one to the baseline image; the contributions
    along one ordering telescope to ``v(all) - v(none)``, so every estimate satisfies
    efficiency exactly and is unbiased for the Shapley value (variance falls as
    ``1 / permutations``). Orderings are ``torch.randperm(max K_i, generator)`` shared by
    the whole batch, restricted to each sample's features: these are Captum's
    ``ShapleyValueSampling`` orderings after ``torch.manual_seed(seed)`` (Captum orders all
    ``max K_i`` labels; a label a sample lacks has no pixels and contributes nothing), and
    the values match it.

    Cost: ``N * (2 + permutations * (K - 1))`` forwards (Captum: ``1 + permutations * K``
    per sample); about 490 per image with the defaults.
    """
    permutations = _positive_int(permutations, "permutations")
    game = make_game(problem, segments, segmentation, n_segments, grid, baseline, batch_size)
    generator = torch.Generator().manual_seed(int(seed))
    orders = [torch.randperm(game.width, generator=generator) for _ in range(permutations)]
    tables = []
    for count in game.counts:
        steps = torch.arange(1, count).view(-1, 1)
        ranks = []
        for order in orders:
            order = order[order < count]
            rank = torch.full((game.width,), game.width)
            rank[order] = torch.arange(count)
            ranks.append(rank.view(1, -1) < steps)       # prefixes of length 1..K-1
        tables.append(torch.cat(ranks))
    values, clean, empty = game.play_tables(tables, full=True, empty=True)
    phi = torch.zeros(len(game.counts), game.width, dtype=torch.float64)
    for sample, count in enumerate(game.counts):
        chains = values[sample].view(permutations, count - 1)
        chains = torch.cat([empty[sample].expand(permutations, 1), chains,
                            clean[sample].expand(permutations, 1)], dim=1)
        for order, contributions in zip(orders, chains.diff(dim=1)):
            phi[sample, order[order < count]] += contributions
    return game.spread(phi / permutations)


# ---- KernelSHAP ------------------------------------------------------------------------------

def shapley_kernel(features: int, sizes: torch.Tensor) -> torch.Tensor:
    """pi(s) = (K - 1) / (C(K, s) s (K - s)), the Shapley kernel (Lundberg & Lee 2017, Thm 2)."""
    sizes = sizes.to(torch.float64)
    log_binomial = (math.lgamma(features + 1) - torch.lgamma(sizes + 1)
                    - torch.lgamma(features - sizes + 1))
    return (features - 1) / (torch.exp(log_binomial) * sizes * (features - sizes))


def all_coalitions(features: int) -> torch.Tensor:
    """Every coalition except the empty and the full one: ``(2^K - 2, K)`` boolean."""
    codes = torch.arange(1, 2 ** features - 1).view(-1, 1)
    return (codes >> torch.arange(features)) & 1 == 1


def sample_kernel_coalitions(features: int, samples: int, paired: bool,
                             generator: torch.Generator) -> torch.Tensor:
    """``samples`` coalitions drawn from the Shapley kernel: a size s with probability
    proportional to ``1 / (s (K - s))`` (the kernel summed over the C(K, s) coalitions of
    that size), then s features uniformly; with ``paired``, each draw and its complement."""
    draws = math.ceil(samples / 2) if paired else samples
    sizes = torch.arange(1, features)
    probability = 1.0 / (sizes * (features - sizes)).double()
    size = sizes[torch.multinomial(probability, draws, replacement=True, generator=generator)]
    ranks = torch.rand(draws, features, generator=generator).argsort(1).argsort(1)
    table = ranks < size.view(-1, 1)
    if paired:
        table = torch.cat([table, ~table])[:samples]
    return table


def constrained_least_squares(table: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                              total: float) -> torch.Tensor:
    """argmin_phi sum_j w_j (y_j - z_j . phi)^2 subject to sum(phi) = total (KKT system)."""
    z = table.to(torch.float64)
    features = z.shape[1]
    system = torch.zeros(features + 1, features + 1, dtype=torch.float64)
    system[:features, :features] = z.T @ (weights.view(-1, 1) * z)
    system[:features, features] = 1.0
    system[features, :features] = 1.0
    rhs = torch.cat([z.T @ (weights * y), torch.tensor([total], dtype=torch.float64)])
    solution = torch.linalg.lstsq(system, rhs.view(-1, 1), driver="gelsd").solution
    return solution[:features, 0]


@register("kernel_shap", family="perturbation", signed=True,
          reference="Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions",
          summary="Shapley values of the superpixels from a kernel-weighted linear fit")
@_feature_options
def kernel_shap(problem: Problem, *, samples: int = 512, paired: bool = True,
                segments: object = None, segmentation: str = "slic",
                n_segments: int | None = None, grid: int | tuple[int, int] | None = None,
                baseline: object = 0.0, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """phi = argmin sum_z pi(z) (v(z) - v(none) - z . phi)^2 with sum(phi) = v(all) - v(none).

    The Shapley kernel ``pi`` gives the empty and full coalitions infinite weight; we impose
    them exactly (intercept ``v(none)`` and the efficiency constraint), as the paper's
    Theorem 2 states the problem, so the values always sum to ``v(all) - v(none)``. When
    ``samples >= 2^K - 2`` every coalition is enumerated with its exact kernel weight and the
    result *is* the Shapley value; otherwise ``samples`` coalitions are drawn from the kernel
    and weighted equally (Monte Carlo of the same objective). ``paired`` adds each draw's
    complement (Covert & Lee 2021, paired sampling: lower variance, same limit).

    Deviation from Captum's ``KernelShap``: Captum samples the same distribution (without
    pairing) but fits an unconstrained regression with an intercept, approximating the
    infinite weights by 1e6 on its first two samples (full and empty); its sums match
    efficiency only approximately and its draws differ, so the two agree statistically.

    Cost: ``N * (2 + min(samples, 2^K - 2))`` forwards.
    """
    samples = _positive_int(samples, "samples")
    if not isinstance(paired, bool):
        raise MethodError(f"paired must be True or False, got {paired!r}")
    game = make_game(problem, segments, segmentation, n_segments, grid, baseline, batch_size)
    generator = torch.Generator().manual_seed(int(seed))
    tables, weights = [], []
    for count in game.counts:
        if count == 1:
            table, weight = torch.zeros(0, 1, dtype=torch.bool), torch.zeros(0)
        elif 2 ** count - 2 <= samples:
            table = all_coalitions(count)
            weight = shapley_kernel(count, table.sum(1))
        else:
            table = sample_kernel_coalitions(count, samples, paired, generator)
            weight = torch.ones(table.shape[0], dtype=torch.float64)
        tables.append(table)
        weights.append(weight)
    values, clean, empty = game.play_tables(tables, full=True, empty=True)
    phi = torch.zeros(len(game.counts), game.width, dtype=torch.float64)
    for sample, (table, weight, value) in enumerate(zip(tables, weights, values)):
        total = float(clean[sample] - empty[sample])
        if table.shape[0] == 0:
            phi[sample, 0] = total
            continue
        phi[sample, :game.counts[sample]] = constrained_least_squares(
            table, value - empty[sample], weight.to(torch.float64), total)
    return game.spread(phi)


# ---- LIME ------------------------------------------------------------------------------------

def weighted_ridge(table: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                   alpha: float) -> torch.Tensor:
    """Coefficients of argmin sum_j w_j (y_j - b - z_j . phi)^2 + alpha |phi|^2 (b free),
    what scikit-learn's ``Ridge(alpha).fit(z, y, sample_weight=w)`` computes."""
    z = table.to(torch.float64)
    total = weights.sum()
    z_mean = (weights.view(-1, 1) * z).sum(0) / total
    y_mean = (weights * y).sum() / total
    zc, yc = z - z_mean, y - y_mean
    system = zc.T @ (weights.view(-1, 1) * zc) + alpha * torch.eye(z.shape[1],
                                                                  dtype=torch.float64)
    rhs = zc.T @ (weights * yc)
    return torch.linalg.lstsq(system, rhs.view(-1, 1), driver="gelsd").solution[:, 0]


def lime_weights(table: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """exp(-d^2 / (2 width^2)) with d the cosine distance between z and the all-ones vector,
    ``1 - sqrt(|z| / K)`` (1 for the empty coalition), as the ``lime`` package weighs."""
    distance = 1 - torch.sqrt(table.sum(1).double() / table.shape[1])
    return torch.exp(-distance ** 2 / (2 * kernel_width ** 2))


@register("lime", family="perturbation", signed=True,
          reference="Ribeiro, Singh, Guestrin 2016, \"Why Should I Trust You?\": Explaining "
                    "the Predictions of Any Classifier",
          summary="weight of each superpixel in a local linear fit to the model's score")
@_feature_options
def lime(problem: Problem, *, samples: int = 512, kernel_width: float = 0.25,
         alpha: float = 1.0, segments: object = None, segmentation: str = "slic",
         n_segments: int | None = None, grid: int | tuple[int, int] | None = None,
         baseline: object = 0.0, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """Ridge coefficients of ``v(z) ~ b + z . phi`` over random coalitions z.

    Coalitions keep each feature with probability 1/2 (``torch.bernoulli`` from the
    generator, sample after sample); each is weighted by ``exp(-d^2 / (2 kernel_width^2))``
    with ``d`` the cosine distance between z and the full image's all-ones vector, and the
    fit is a ridge regression with a free intercept, ``alpha`` on the coefficients only. The
    defaults are the ``lime`` package's image explainer (``kernel_width=0.25``,
    ``Ridge(alpha=1)``), with all features kept (no feature selection, the paper's K-LASSO
    step). The ``lime`` package also puts the unperturbed image first among its samples; we
    and Captum do not. With
    ``Lime(interpretable_model=SkLearnRidge(alpha), similarity_func=<this kernel on the
    interpretable vector>)`` Captum draws the same coalitions after
    ``torch.manual_seed(seed)`` and fits the same model.

    Unlike the Shapley methods, LIME's values have no efficiency property; they describe the
    local slope, and depend on ``kernel_width`` and ``alpha``.

    Cost: ``N * samples`` forwards.
    """
    samples = _positive_int(samples, "samples")
    for value, name, low in ((kernel_width, "kernel_width", "> 0"), (alpha, "alpha", ">= 0")):
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not math.isfinite(value) or (value <= 0 if name == "kernel_width"
                                                else value < 0)):
            raise MethodError(f"{name} must be a finite number {low}, got {value!r}")
    game = make_game(problem, segments, segmentation, n_segments, grid, baseline, batch_size)
    generator = torch.Generator().manual_seed(int(seed))
    tables = [torch.bernoulli(torch.full((samples, count), 0.5), generator=generator).bool()
              for count in game.counts]
    values, _, _ = game.play_tables(tables)
    phi = torch.zeros(len(game.counts), game.width, dtype=torch.float64)
    for sample, (table, value) in enumerate(zip(tables, values)):
        phi[sample, :game.counts[sample]] = weighted_ridge(
            table, value, lime_weights(table, float(kernel_width)), float(alpha))
    return game.spread(phi)


# ---- feature ablation ------------------------------------------------------------------------

@register("feature_ablation", family="perturbation", signed=True,
          reference="Zeiler & Fergus 2014 (occlusion); over feature groups as in Captum's "
                    "FeatureAblation",
          summary="drop of the target score when one superpixel or grid cell is removed")
@_feature_options
def feature_ablation(problem: Problem, *, segments: object = None, segmentation: str = "slic",
                     n_segments: int | None = None, grid: int | tuple[int, int] | None = None,
                     baseline: object = 0.0, batch_size: int = 64) -> torch.Tensor:
    """phi_k = v(all) - v(all but k): leave-one-out, one forward per feature.

    Deterministic, equal to Captum's ``FeatureAblation`` with ``feature_mask`` = the labels
    (up to the per-pixel division). It ignores interactions: two features that each suffice
    for the prediction both get ~0.

    Cost: ``N * (K + 1)`` forwards.
    """
    game = make_game(problem, segments, segmentation, n_segments, grid, baseline, batch_size)
    tables = [~torch.eye(count, dtype=torch.bool) for count in game.counts]
    values, clean, _ = game.play_tables(tables, full=True)
    phi = torch.zeros(len(game.counts), game.width, dtype=torch.float64)
    for sample, value in enumerate(values):
        phi[sample, :game.counts[sample]] = clean[sample] - value
    return game.spread(phi)
