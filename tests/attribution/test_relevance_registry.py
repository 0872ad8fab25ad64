"""The LRP rule and composite registry: one entry per name, read everywhere."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TinyVGG, seeded

import convlens as cl
from convlens.attribution.relevance import COMPOSITES, RULE_NAMES
from convlens.attribution.relevance import rules as R
from convlens.attribution.relevance.composites import composite_entry, named_composite
from convlens.errors import MethodError


def test_every_rule_is_registered_once_with_its_parameters_and_paper() -> None:
    assert set(RULE_NAMES) == {"epsilon", "zplus", "alpha_beta", "gamma", "flat", "zbox",
                               "norm", R.PASS, R.GRADIENT}
    assert dict(R.rule_entry("epsilon").parameters) == {"epsilon": 1e-6}
    assert dict(R.rule_entry("alpha_beta").parameters) == {"alpha": 2.0, "beta": 1.0}
    assert set(R.rule_entry("zbox").parameters) == {"low", "high"}
    assert all(R.rule_entry(name).reference for name in RULE_NAMES)


def test_entries_build_the_rules_with_the_call_options() -> None:
    built = R.rule_entry("gamma").make({"gamma": 0.5, "epsilon": 3.0})  # epsilon: not gamma's
    assert (built.name, built.groups[0].factor, built.epsilon) == ("gamma", 1.25, R.STABILISER)
    assert R.rule_entry("epsilon").make({"epsilon": 0.0}).epsilon == 0.0
    assert R.rule_entry(R.PASS).make() == R.PASS
    with pytest.raises(MethodError, match="zbox rule needs low and high"):
        R.rule_entry("zbox").make({"low": None})


def test_composites_name_registered_rules() -> None:
    for name in COMPOSITES:
        entry = composite_entry(name)
        for rule in (entry.conv, entry.dense, entry.first):
            assert rule is None or rule in RULE_NAMES
    layout = named_composite("epsilon_plus_flat", epsilon=0.1)
    assert (layout.conv.name, layout.dense.epsilon, layout.first.name) == ("zplus", 0.1, "flat")


@pytest.mark.parametrize("kind, call", [
    ("rule", lambda: R.rule_entry("z_box")),
    ("composite", lambda: composite_entry("epsilon_plus_box")),
    ("rule", lambda: cl.attribute(seeded(TinyVGG()), torch.randn(1, 3, 16, 16), "lrp",
                                  rules={"features.0": "zbx"})),
    ("composite", lambda: cl.attribute(seeded(TinyVGG()), torch.randn(1, 3, 16, 16), "lrp",
                                       composite="bogus")),
])
def test_unknown_names_raise_listing_the_valid_ones(kind: str, call) -> None:
    valid = RULE_NAMES if kind == "rule" else COMPOSITES
    with pytest.raises(MethodError, match=f"unknown {kind}") as info:
        call()
    assert all(name in str(info.value) for name in valid)
