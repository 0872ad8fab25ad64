"""Feature visualization: pictures of what channels, neurons, layers and classes respond to.

``visualize(model, objective)`` optimises images (Olah et al. 2017); ``objectives`` says
what to maximise, ``param`` how the image is parameterised, ``transforms`` how it is
jittered for robustness; ``inspection`` has the cheap views (activation maps, first-layer
filters) and ``gallery`` the demo page's section.
"""

from convlens.visualization import objectives, transforms
from convlens.visualization.inspection import activation_grid, activation_maps, filter_grid
from convlens.visualization.optimize import Visualization, visualize

__all__ = ["Visualization", "activation_grid", "activation_maps", "filter_grid", "objectives",
           "transforms", "visualize"]
