"""Attribution methods: the registry (a leaf), the ``attribute`` entry point and the families.

Importing this package imports every module of its folder once
(:func:`convlens.discovery.import_modules`: every name not starting with ``_``, sorted);
importing a family registers its methods in :mod:`convlens.attribution.registry`. The
families import the registry and :mod:`convlens.attribution.core`; neither imports a family,
so the registry stays a leaf and no import cycle runs through it (docs/architecture.md,
"Layers"). A new method is a new file in this folder, with nothing else to edit.
"""

from convlens.discovery import import_modules

import_modules(__name__)  # importing a family registers its methods
