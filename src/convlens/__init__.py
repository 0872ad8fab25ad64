"""convlens: see why a convolutional image classifier decides what it decides.

The public face::

    import convlens as cl
    clf = cl.load_model()                                   # bundled EfficientNet-Lite0
    a = cl.attribute(clf, clf.preprocess("cat.jpg"), "gradcam")
    exps = cl.explain(clf, ["cat.jpg"], methods=["gradcam", "saliency"])
"""

from convlens import objectives
from convlens.attribution.core import Method, attribute, get_method, methods
from convlens.errors import ConvlensError, ConvlensWarning
from convlens.explain import Explanation, class_grid, explain, iter_explain
from convlens.models.classifier import Classifier, as_classifier
from convlens.models.layers import LayerInfo
from convlens.models.loading import load_model
from convlens.visualization.optimize import Visualization, visualize

__all__ = [
    "Classifier",
    "ConvlensError",
    "ConvlensWarning",
    "Explanation",
    "LayerInfo",
    "Method",
    "as_classifier",
    "attribute",
    "class_grid",
    "explain",
    "get_method",
    "iter_explain",
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

    classifier = as_classifier(model)
    return list_layers(classifier.module, classifier.sample_shape, classifier.device)
