"""The planted Clever-Hans case end to end through the pure audit steps (no files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from planted_bias import CLASSES, TAG_CLASS, planted_case

import convlens as cl
from convlens.auditing.causal import causal_check, cluster_regions
from convlens.auditing.spray import spray
from convlens.auditing.suspicion import group_scores, mean_map


@pytest.fixture(scope="module")
def audited():
    case = planted_case()
    x = case.x
    with torch.no_grad():
        predicted = case.model(x).argmax(1).numpy()
    raw = cl.attribute(case.model, x, "gradcam", target=torch.as_tensor(predicted))
    maps = F.interpolate(raw, size=(32, 32), mode="bilinear").squeeze(1).numpy()
    groups, results = {}, {}
    for c, name in enumerate(CLASSES):
        members = predicted == c
        results[name] = (np.flatnonzero(members), spray(maps[members.astype(bool)], tsne=False))
        groups[name] = (maps[members], results[name][1].labels,
                        (case.labels[members] == c).tolist())
    return case, predicted, maps, groups, results


def test_the_model_learned_the_tag(audited):
    case, predicted, *_ = audited
    tag = CLASSES.index(TAG_CLASS)
    others_tagged = case.tagged & (case.labels != tag)
    assert (predicted[others_tagged] == tag).mean() >= 0.8      # mistakes because of the tag
    clean = ~case.tagged
    assert (predicted[clean] == case.labels[clean]).mean() >= 0.9  # shapes are learned too


def test_spray_separates_the_tag_strategy_from_the_shape_strategy(audited):
    case, _, _, _, results = audited
    index, result = results[TAG_CLASS]
    tagged = case.tagged[index]
    assert result.n_clusters >= 2
    tag_clusters = {int(c) for c in result.labels[tagged]}
    shape_clusters = {int(c) for c in result.labels[~tagged]}
    assert not tag_clusters & shape_clusters
    majority = np.bincount(result.labels[tagged]).argmax()
    assert (result.labels[tagged] == majority).mean() >= 0.9


def test_suspicion_ranks_the_tag_cluster_first_and_covering_it_flips(audited):
    case, predicted, maps, groups, results = audited
    ranked = group_scores(groups)
    top = ranked[0]
    index, result = results[TAG_CLASS]
    members = index[result.labels == top.cluster]
    assert top.group == TAG_CLASS
    assert case.tagged[members].mean() >= 0.9
    assert top.error_rate >= 0.5 and top.isolation > 0.5 and top.concentration > 0.8
    assert top.suspicion > ranked[1].suspicion
    heat = mean_map(maps[members])
    region = cluster_regions(heat, (32, 32)).hot[0]
    # the hot region is the tag corner
    ys, xs = np.nonzero(region.numpy())
    assert ys.min() >= 20 and xs.min() >= 20
    check = causal_check(case.model, case.x[members], heat,
                         predicted=torch.as_tensor(predicted[members]), seed=0)
    mistakes = (case.labels[members] != predicted[members]).mean()
    assert check.verdict == "matters" and check.region_fraction == 1 / 16
    assert check.flip_rate >= 0.8 * mistakes    # uncovering the shape restores the truth
    assert check.random_flip_rate <= 0.15
    assert check.flip_rate >= check.random_flip_rate + 0.4


def test_a_subsample_of_the_tag_class_still_separates_the_tag(audited):
    """SpRAy on a capped sample (what the audit does above ``max_cluster_maps``) still puts
    the tagged images, sampled or assigned, in a cluster of their own."""
    case, predicted, maps, _, results = audited
    index, whole = results[TAG_CLASS]
    assert len(index) > 100
    part = spray(maps[index], tsne=False, max_maps=60)
    assert part.labels.shape == whole.labels.shape and part.n_clusters >= 2
    tagged = case.tagged[index]
    majority = np.bincount(part.labels[tagged]).argmax()
    assert (part.labels[tagged] == majority).mean() >= 0.9       # the tag is one cluster...
    assert tagged[part.labels == majority].mean() >= 0.9          # ...of tagged images
