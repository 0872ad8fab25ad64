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
  exact, deterministic, no autograd; the layer's width enters only through the Gram matrix
  and the final ``rows.T @ weights``. Per-feature standardisation is not used: it would
  reweight the space the directional derivatives are taken in, and blow up the noise of
  near-dead channels.
* ``fastcav`` (Schmalwasser et al., ICML 2025, "FastCAV"): the vector from the global mean of
  all activations (concept and random together) to the concept's mean; for balanced sets
  it is half the difference of the two means. No optimisation at all.

Both are computed as weights on the rows (``*_weights``), so that TCAV fits every CAV of a
layer from one Gram matrix (:func:`row_gram`) and makes them all with one product;
:func:`linear_cav` and :func:`fast_cav` return the unit vector, pointing to the concept.
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


def row_gram(rows: torch.Tensor) -> torch.Tensor:
    """``Z Z^T`` in float64 of ``rows`` ``(n, d)`` centred by their mean: what every fit on a
    subset of the rows needs (centring a subset again is exact on this matrix, and the
    common shift keeps float32's products free of the large uncentred norms)."""
    centred = rows - rows.mean(dim=0)
    return (centred @ centred.T).double()


def fast_cav_weights(n_concept: int, n_random: int, *, device: torch.device | None = None
                     ) -> torch.Tensor:
    """FastCAV as weights on the rows (concept first): ``mean(concept) - mean(all)`` is
    ``sum_i c_i x_i`` with ``c = 1/n_c - 1/n`` on the concept's rows and ``-1/n`` on the rest."""
    n = n_concept + n_random
    weights = torch.full((n,), -1.0 / n, dtype=torch.float64, device=device)
    weights[:n_concept] += 1.0 / n_concept
    return weights


def linear_cav_weights(gram: torch.Tensor, n_concept: int, *, l2: float = 0.01,
                       max_iter: int = 50) -> torch.Tensor:
    """The linear CAV as weights on the rows (concept first), from their Gram matrix.

    Minimises, over ``w`` and ``b``, the class-balanced mean logistic loss of
    ``w . (x - mu) / s + b`` (label 1 for the concept) plus ``l2 / 2 * |w|^2``, where ``mu``
    is the mean of the rows and ``s`` their RMS distance to it. With ``Z`` the scaled rows and
    ``Z Z^T = U E U^T``, the optimal ``w`` is ``Z^T U E^-1/2 c`` where ``c`` solves the same
    regression on the ``n x r`` features ``U E^1/2`` (``|w| = |c|``, so the penalty is the
    same); Newton's method with step halving solves it in a few iterations, from zero. Since
    ``sum_i a_i (x_i - mu) = sum_i (a_i - mean(a)) x_i``, the returned weights apply to the
    rows as they are: ``cav ~ rows.T @ weights``.

    Args:
        gram: ``x_i . x_j`` of the rows, float64 ``(n, n)``, centred by any common vector.
        n_concept: How many of the rows (the first) are the concept's.
        l2: Regularisation strength.
        max_iter: Newton iterations at most.
    """
    n = gram.shape[0]
    centred = gram - gram.mean(dim=0) - gram.mean(dim=1, keepdim=True) + gram.mean()
    scale = centred.diagonal().sum() / n  # mean squared distance to the mean
    if scale <= 0:
        return torch.zeros(n, dtype=torch.float64, device=gram.device)
    energy, basis = torch.linalg.eigh(centred / scale)
    kept = energy > energy.max() * 1e-10
    energy, basis = energy[kept], basis[:, kept]
    features = torch.cat([basis * energy.sqrt(), torch.ones_like(basis[:, :1])], dim=1)
    target = torch.zeros(n, dtype=torch.float64, device=gram.device)
    target[:n_concept] = 1.0
    weight = torch.where(target > 0, 0.5 / n_concept, 0.5 / (n - n_concept))  # balanced
    penalty = torch.full((features.shape[1],), float(l2), dtype=torch.float64,
                         device=gram.device)
    penalty[-1] = 0.0  # the bias is not penalised

    def loss(theta: torch.Tensor) -> torch.Tensor:
        logits = features @ theta
        return ((weight * (F.softplus(logits) - target * logits)).sum()
                + 0.5 * (penalty * theta * theta).sum())

    theta = torch.zeros(features.shape[1], dtype=torch.float64, device=gram.device)
    current = loss(theta)
    eye = 1e-12 * torch.eye(len(theta), dtype=torch.float64, device=gram.device)
    for _ in range(max_iter):
        p = torch.sigmoid(features @ theta)
        gradient = features.T @ (weight * (p - target)) + penalty * theta
        hessian = (features.T * (weight * p * (1 - p))) @ features + torch.diag(penalty)
        step = torch.linalg.solve(hessian + eye, gradient)
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
    return coefficients - coefficients.mean()


def cav_weights(kind: str, gram: torch.Tensor, n_concept: int) -> torch.Tensor:
    """Row weights of the CAV of ``kind`` (``"linear"`` or ``"fastcav"``), concept rows first."""
    if kind == "fastcav":
        return fast_cav_weights(n_concept, gram.shape[0] - n_concept, device=gram.device)
    return linear_cav_weights(gram, n_concept)


def _from_weights(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return _unit(rows.T @ weights.to(rows.dtype))


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
    weights = fast_cav_weights(len(concept), len(random), device=concept.device)
    return _from_weights(torch.cat([concept, random]), weights)


def linear_cav(concept: torch.Tensor, random: torch.Tensor, *, l2: float = 0.01,
               max_iter: int = 50) -> torch.Tensor:
    """The unit normal of a logistic regression telling concept from random activations
    (:func:`linear_cav_weights`): the direction in which the concept's logit grows, in the
    activation space.

    Args:
        concept: Activations of the concept's examples, ``(n_c, ...)``.
        random: Activations of the counterexamples, ``(n_r, ...)``.
        l2: Regularisation strength (scikit-learn's ``SGDClassifier`` ``alpha`` that Captum
            uses is 0.01 too); the rows are scaled to unit RMS norm first, so it does not
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
    rows = torch.cat([_flat(concept), _flat(random)])
    weights = linear_cav_weights(row_gram(rows), len(concept), l2=l2, max_iter=max_iter)
    return _from_weights(rows, weights)
