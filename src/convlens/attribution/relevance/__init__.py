"""Layer-wise relevance propagation (LRP): rules, composites, and the registered methods.

Importing this package registers ``lrp_epsilon``, ``lrp_zplus``, ``lrp_alpha_beta``,
``lrp_gamma``, ``lrp_flat`` and ``lrp`` (composites). The layout:

* ``rules.py``: each rule as data (modified inputs and parameters, groups, stabiliser);
* ``composites.py``: which rule each module gets, user overrides, :func:`register_rule`;
* ``canonizers.py``: layers as affine maps; BatchNorm merged into the layer before it;
* ``graph.py``: the autograd functions that carry relevance like a gradient;
* ``propagation.py``: the engine (hooks, lazy layers, one forward and one backward pass);
* ``functions.py``: conventions for torch functions called in a ``forward`` (``+``,
  ``torch.flatten``, ``F.relu``...);
* ``methods.py``: the registered methods.

Importing this package imports every module of its folder once
(:func:`convlens.discovery.import_modules`), so a new rule (``@register_layer_rule``) or
composite (``register_composite(...)``) may also be a new file here, with nothing else to edit.
``RULE_NAMES`` and ``COMPOSITES`` are taken after that import: they name every rule and
composite of the folder.

Example:
    >>> import convlens as cl                                      # doctest: +SKIP
    >>> r = cl.attribute(model, x, "lrp", composite="epsilon_gamma_box")  # doctest: +SKIP
    >>> r = cl.attribute(model, x, "lrp", rules={"blocks.3.se": "pass"})  # doctest: +SKIP
"""

from convlens.attribution.relevance.composites import composite_names, register_rule
from convlens.attribution.relevance.rules import LayerRule, rule_names
from convlens.discovery import import_modules

import_modules(__name__)  # registers the methods, and rules or composites of added files
RULE_NAMES = rule_names()
COMPOSITES = composite_names()

__all__ = ["COMPOSITES", "RULE_NAMES", "LayerRule", "register_rule"]
