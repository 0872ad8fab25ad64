"""convlens: see why a convolutional image classifier decides what it decides.

The public face::

    import convlens as cl
    clf = cl.load_model()                                   # bundled EfficientNet-Lite0
    a = cl.attribute(clf, clf.preprocess("cat.jpg"), "gradcam")
    exps = cl.explain(clf, ["cat.jpg"], methods=["gradcam", "saliency"])
"""

from convlens import objectives
from convlens.attribution.core import Method, attribute, get_method, methods
from convlens.errors import ConvlensError
from convlens.explain import Explanation, explain
from convlens.models.classifier import Classifier
from convlens.models.layers import LayerInfo
from convlens.models.loading import load_model
from convlens.visualization.optimize import Visualization, visualize

__all__ = [
    "Classifier",
    "ConvlensError",
    "Explanation",
    "LayerInfo",
    "Method",
    "attribute",
    "explain",
    "get_method",
    "layers",
    "load_model",
    "methods",
    "objectives",
    "Visualization",
    "visualize",
]

__version__ = "0.1.0"


def layers(model: object) -> list[LayerInfo]:
    """Every layer's name, type and output shape (for one sample), to choose ``layer=``.

    Args:
        model: A Classifier (its input size is used) or an ``nn.Module`` taking
            ``(N, 3, 224, 224)`` inputs.
    """
    from convlens.models.layers import list_layers

    if isinstance(model, Classifier):
        height, width = model.preprocessing.input_size
        shape = (model.preprocessing.channels, height, width)
        return list_layers(model.module, shape, model.device)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else "cpu"
    return list_layers(model, (3, 224, 224), device)
