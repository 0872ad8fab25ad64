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

Example:
    >>> import convlens as cl                                      # doctest: +SKIP
    >>> r = cl.attribute(model, x, "lrp", composite="epsilon_gamma_box")  # doctest: +SKIP
    >>> r = cl.attribute(model, x, "lrp", rules={"blocks.3.se": "pass"})  # doctest: +SKIP
"""

from convlens.attribution.relevance import methods  # noqa: F401  (registers the methods)
from convlens.attribution.relevance.composites import COMPOSITES, register_rule
from convlens.attribution.relevance.rules import RULE_NAMES, LayerRule

__all__ = ["COMPOSITES", "RULE_NAMES", "LayerRule", "register_rule"]
