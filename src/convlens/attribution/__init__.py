"""Attribution methods: the registry (a leaf), the ``attribute`` entry point and the families.

Importing this package imports every family module once; importing a family registers its
methods in :mod:`convlens.attribution.registry`. The families import the registry and
:mod:`convlens.attribution.core`; neither imports a family, so the registry stays a leaf and
no import cycle runs through it (docs/architecture.md, "Layers"). A new family module is
added to the one import line below.
"""

from convlens.attribution import (  # noqa: F401  (importing a family registers its methods)
    cam,
    crp,
    gradients,
    modified_gradients,
    noise,
    perturbation,
    relevance,
    shapley,
)
