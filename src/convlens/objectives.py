"""Feature-visualization objectives: ``from convlens import objectives as obj``.

A re-export of :mod:`convlens.visualization.objectives`; see there for the conventions
(objectives are maximised; penalties are subtracted).
"""

from convlens.visualization.objectives import *  # noqa: F403
from convlens.visualization.objectives import __all__  # noqa: F401
