"""Concepts in the audit: which of a layer's channels a strategy rests on, and channels that
point at a few images of many classes.

The pass recorded per image every channel's relevance ``R_c`` for the predicted class at the
concept layer (CRP's channel relevance, Achtibat et al. 2023; ``concepts`` side array,
:mod:`convlens.auditing.passes`). Here, pure numpy:

* :func:`relevance_shares`: each image's ``R_c / sum_c |R_c|``, so an image with a large
  logit does not outweigh the others.
* :func:`rank_concepts`: a strategy's concepts, ranked by ``score = mean share over its
  members - mean share over the rest of its groups`` (what sets the strategy apart, not what
  every image of the class uses; the images of the audit outside it where its groups hold no
  other image). A plain ranking by the members' mean share alone (:func:`plain_concepts`) is
  kept for the benchmark's baseline.
* :func:`reference_images`: a channel's reference images are the top-k of its recorded
  column over the whole audit (no second pass; the hottest position recorded beside each
  value says where to crop).
* :func:`outlier_concepts`: the DORA-like route (Bykov et al. 2023, "DORA: Exploring
  outlier representations in deep neural networks"): a channel whose relevance sits on a
  small set of images spread over several classes (an artefact, not an object) names a
  candidate set of images; :func:`convlens.auditing.strategies.mistake_directions` judges its
  mistakes on the held-out half like every other candidate, so noise does not pass.

See docs/architecture.md, "Concepts".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TOP_CONCEPTS = 5
REFERENCES = 6
HOT_SPREAD = 6.0
"""A channel is hot on an image when its share exceeds the channel's median by this many
(scaled) median absolute deviations."""
MAX_HOT_SHARE = 0.25
"""An outlier channel is hot on at most this share of the images (a *small* set)."""
MIN_HELD = 0.5
"""An outlier channel's hot images hold at least this share of its positive relevance."""
MIN_CLASSES = 3
MAX_OUTLIERS = 4


def relevance_shares(relevances: np.ndarray) -> np.ndarray:
    """``(N, C)`` channel relevances -> each row divided by its sum of ``|R_c|`` (float32;
    a row of zeros stays zero)."""
    r = np.nan_to_num(np.asarray(relevances, dtype=np.float32))
    total = np.abs(r).sum(axis=1, keepdims=True)
    return np.divide(r, total, out=np.zeros_like(r), where=total > 0)


@dataclass
class Concept:
    """One channel a strategy rests on: its score (member share minus rest share), the
    two shares, and its reference images (positions, hottest flat position, relevance)."""

    channel: int
    score: float
    member_share: float
    rest_share: float

    def to_dict(self, layer: str) -> dict[str, Any]:
        return {"channel": self.channel, "layer": layer, "score": round(self.score, 6),
                "member_share": round(self.member_share, 6),
                "rest_share": round(self.rest_share, 6)}


def rank_concepts(shares: np.ndarray, members: Sequence[int], rest: Sequence[int],
                  top: int = TOP_CONCEPTS) -> list[Concept]:
    """The ``top`` channels whose mean share is most above the rest's, positive scores only,
    among the channels that carry positive relevance in the members (a channel whose share
    is merely less negative than elsewhere is not what the strategy rests on; ties: the
    lower channel)."""
    inside = shares[np.asarray(members, dtype=np.int64)]
    if not len(inside):
        return []
    outside = shares[np.asarray(rest, dtype=np.int64)] if len(rest) else \
        np.zeros((1, shares.shape[1]), np.float32)
    member, other = inside.mean(axis=0), outside.mean(axis=0)
    score = member - other
    order = np.lexsort((np.arange(len(score)), -score))
    return [Concept(int(c), float(score[c]), float(member[c]), float(other[c]))
            for c in order if score[c] > 0 and member[c] > 0][:top]


def plain_concepts(shares: np.ndarray, members: Sequence[int], top: int = TOP_CONCEPTS
                   ) -> list[int]:
    """Baseline: the channels with the largest mean share over the members alone."""
    mean = shares[np.asarray(members, dtype=np.int64)].mean(axis=0)
    return [int(c) for c in np.lexsort((np.arange(len(mean)), -mean))[:top]]


def named_concepts(concepts: Sequence[Concept]) -> list[Concept]:
    """The concepts the words name: the first, and those scoring at least half of it (at
    most three)."""
    if not concepts:
        return []
    return [c for c in concepts[:3] if c.score >= 0.5 * concepts[0].score]


def concept_sentence(concepts: Sequence[Concept], layer: str, groups: Sequence[str],
                     rest_named: bool) -> str:
    """"this strategy rests on channels 112 and 87 of blocks.14 (relevance share 31% in its
    images against 4% in the rest of 'square')"."""
    named = named_concepts(concepts)
    if not named:
        return ""
    channels = [str(c.channel) for c in named]
    listed = channels[0] if len(channels) == 1 else ", ".join(channels[:-1]) + \
        f" and {channels[-1]}"
    member = sum(c.member_share for c in named)
    rest = sum(c.rest_share for c in named)
    where = ("the rest of " + ", ".join(f"'{g}'" for g in groups[:3])
             + (" ..." if len(groups) > 3 else "")) if rest_named else "the other images"
    noun = "channel" if len(named) == 1 else "channels"
    return (f"this strategy rests on {noun} {listed} of {layer} (relevance share "
            f"{member:.0%} in its images against {rest:.0%} in {where})")


def reference_images(relevances: np.ndarray, channel: int, k: int = REFERENCES
                     ) -> list[int]:
    """Positions of the ``k`` images with the largest recorded relevance of ``channel``
    (positive only), largest first."""
    column = np.nan_to_num(np.asarray(relevances[:, channel], dtype=np.float32))
    order = np.lexsort((np.arange(len(column)), -column))[:k]
    return [int(p) for p in order if column[p] > 0]


@dataclass
class Outlier:
    """A channel hot on a small set of images of several classes (the DORA-like route)."""

    channel: int
    positions: np.ndarray  # the images it is hot on, ascending
    held: float  # the share of the channel's positive relevance they hold
    classes: int


def outlier_concepts(shares: np.ndarray, classes: Sequence[Any], *,
                     hot_spread: float = HOT_SPREAD, max_hot_share: float = MAX_HOT_SHARE,
                     min_held: float = MIN_HELD, min_images: int = 8,
                     min_classes: int = MIN_CLASSES, most: int = MAX_OUTLIERS
                     ) -> list[Outlier]:
    """Channels whose relevance is concentrated on a small set of images spread over
    several classes, most concentrated first.

    A channel is *hot* on an image when its share exceeds the channel's median by
    ``hot_spread`` scaled MADs (and is positive). It is an outlier concept when it is hot
    on ``min_images`` to ``max_hot_share`` of the images, those images hold at least
    ``min_held`` of its positive relevance, and they fall in at least ``min_classes``
    classes (``classes``: per image a labelled class, or the predicted one without labels;
    fewer when the audit has fewer).
    """
    n = shares.shape[0]
    if n == 0:
        return []
    known = {c for c in classes if c is not None}
    need = min(min_classes, len(known))
    median = np.median(shares, axis=0)
    spread = 1.4826 * np.median(np.abs(shares - median), axis=0)
    positive = np.clip(shares, 0, None)
    totals = positive.sum(axis=0)
    found = []
    for c in range(shares.shape[1]):
        if totals[c] <= 0:
            continue
        hot = np.flatnonzero((shares[:, c] > median[c] + hot_spread * max(spread[c], 1e-6))
                             & (shares[:, c] > 0))
        if not min_images <= len(hot) <= max_hot_share * n:
            continue
        held = float(positive[hot, c].sum() / totals[c])
        spread_over = len({classes[p] for p in hot if classes[p] is not None})
        if held >= min_held and spread_over >= max(need, 1):
            found.append(Outlier(c, hot, held, spread_over))
    found.sort(key=lambda o: (-o.held, o.channel))
    return found[:most]
