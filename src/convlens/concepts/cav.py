"""Concept activation vectors: a direction in a layer's activation space that points from
random examples towards a concept's examples (docs/architecture.md, "Concepts").

Two estimators, both in torch on the activations' device (no scikit-learn, no copy to the
CPU: a 1280 x 7 x 7 layer is 62,720 features per image):

* ``linear`` (Kim et al. 2018, "Interpretability Beyond Feature Attribution", Sec. 3.1): the
  normal of an L2-regularised logistic regression separating concept from random
  activations. Kim et al. and Captum fit scikit-learn's ``SGDClassifier`` on the raw
  activations; here the activations are mean-centred and divided by one scalar (their RMS
  distance to the mean), which leaves the geometry, hence the direction, as it is, and the
  regression is solved in the span of the rows: the weight of an L2-regularised linear model
  lies there (representer theorem), so after one ``n x n`` eigendecomposition of the Gram
  matrix it is an ``n``-dimensional problem, solved by Newton's method in float64 from zero:
  exact, deterministic, no autograd, and its cost does not grow with the layer's width
  beyond two ``n x d`` products. Per-feature standardisation is
  not used: it would reweight the space the directional derivatives are taken in, and blow
  up the noise of near-dead channels.
* ``fastcav`` (Schmalwasser et al., ICML 2025, "FastCAV"): the vector from the global mean of
  all activations (concept and random together) to the concept's mean; for balanced sets
  it is half the difference of the two means. No optimisation at all.

Both return a unit vector of the flattened activation's length, pointing to the concept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CAV_KINDS = ("linear", "fastcav")


def _flat(activations: torch.Tensor) -> torch.Tensor:
    return activations.reshape(activations.shape[0], -1)


def _unit(vector: torch.Tensor) -> torch.Tensor:
    norm = vector.norm()
    return vector / norm if norm > 0 else vector


def fast_cav(concept: torch.Tensor, random: torch.Tensor) -> torch.Tensor:
    """FastCAV: ``normalise(mean(concept) - mean(concept and random))``.

    Args:
        concept: Activations of the concept's examples, ``(n_c, ...)``.
        random: Activations of the counterexamples, ``(n_r, ...)``.

    Returns:
        A unit vector ``(d,)`` in the activations' dtype and device, ``d`` the number of
        features per example (zero when every activation is identical).

    Example:
        >>> v = fast_cav(torch.ones(3, 4), torch.zeros(3, 4))
        >>> torch.allclose(v, torch.full((4,), 0.5))
        True
    """
    concept, random = _flat(concept), _flat(random)
    overall = torch.cat([concept, random]).mean(dim=0)
    return _unit(concept.mean(dim=0) - overall)


def linear_cav(concept: torch.Tensor, random: torch.Tensor, *, l2: float = 0.01,
               max_iter: int = 50) -> torch.Tensor:
    """The unit normal of a logistic regression telling concept from random activations.

    Minimises, over ``w`` and ``b``, the class-balanced mean logistic loss of
    ``w . (x - mu) / s + b`` (label 1 for the concept) plus ``l2 / 2 * |w|^2``, where ``mu``
    is the mean of all rows and ``s`` their RMS distance to it. The result is ``w``
    normalised: the direction in which the concept's logit grows, in the activation space.

    Solved exactly in the rows' span: with ``Z`` the scaled rows and ``Z Z^T = U E U^T``
    (``n x n``, float64), the optimal ``w`` is ``Z^T U E^-1/2 c`` where ``c`` solves the same
    regression on the ``n x r`` features ``U E^1/2`` (``|w| = |c|``, so the penalty is the
    same); Newton's method with step halving on those ``r + 1`` unknowns converges in a few
    iterations, from zero, deterministically.

    Args:
        concept: Activations of the concept's examples, ``(n_c, ...)``.
        random: Activations of the counterexamples, ``(n_r, ...)``.
        l2: Regularisation strength (scikit-learn's ``SGDClassifier`` ``alpha`` that Captum
            uses is 0.01 too); the features are scaled to unit RMS norm first, so it does not
            depend on the layer's scale.
        max_iter: Newton iterations at most.

    Returns:
        A unit vector ``(d,)`` in the activations' dtype and device (zero when every
        activation is identical).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> c = torch.randn(20, 5, generator=g) + torch.tensor([2., 0, 0, 0, 0])
        >>> r = torch.randn(20, 5, generator=g)
        >>> bool(linear_cav(c, r)[0] > 0.8)
        True
    """
    concept, random = _flat(concept), _flat(random)
    rows = torch.cat([concept, random])
    centred = rows - rows.mean(dim=0)
    scale = centred.pow(2).sum(dim=1).mean().sqrt()
    if scale == 0:
        return torch.zeros_like(rows[0])
    z = centred / scale
    energy, basis = torch.linalg.eigh((z @ z.T).double())
    kept = energy > energy.max() * 1e-10
    energy, basis = energy[kept], basis[:, kept]
    features = torch.cat([basis * energy.sqrt(), torch.ones_like(basis[:, :1])], dim=1)
    n, n_c = rows.shape[0], concept.shape[0]
    target = torch.zeros(n, dtype=torch.float64, device=rows.device)
    target[:n_c] = 1.0
    weight = torch.where(target > 0, 0.5 / n_c, 0.5 / (n - n_c))  # balanced classes
    penalty = torch.full((features.shape[1],), float(l2), dtype=torch.float64,
                         device=rows.device)
    penalty[-1] = 0.0  # the bias is not penalised

    def loss(theta: torch.Tensor) -> torch.Tensor:
        logits = features @ theta
        return ((weight * (F.softplus(logits) - target * logits)).sum()
                + 0.5 * (penalty * theta * theta).sum())

    theta = torch.zeros(features.shape[1], dtype=torch.float64, device=rows.device)
    current = loss(theta)
    for _ in range(max_iter):
        p = torch.sigmoid(features @ theta)
        gradient = features.T @ (weight * (p - target)) + penalty * theta
        hessian = (features.T * (weight * p * (1 - p))) @ features + torch.diag(penalty)
        step = torch.linalg.solve(hessian + 1e-12 * torch.eye(len(theta), dtype=torch.float64,
                                                               device=rows.device), gradient)
        size = 1.0
        while size > 1e-6:  # step halving: the loss must not rise
            trial = theta - size * step
            value = loss(trial)
            if value <= current:
                break
            size /= 2
        else:
            break
        theta, current = trial, value
        if (size * step).abs().max() < 1e-10:
            break
    coefficients = basis @ (theta[:-1] / energy.sqrt())
    return _unit(z.T @ coefficients.to(z.dtype))


def fit_cav(kind: str, concept: torch.Tensor, random: torch.Tensor) -> torch.Tensor:
    """The CAV of ``kind`` (``"linear"`` or ``"fastcav"``) for concept vs. random activations."""
    if kind == "fastcav":
        return fast_cav(concept, random)
    return linear_cav(concept, random)
