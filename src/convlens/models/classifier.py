"""A classifier: a network plus what it takes to use it on photos.

:class:`Classifier` bundles an ``nn.Module`` with its class labels, its preprocessing and
its device. It is deliberately not an ``nn.Module`` itself: the user's module stays the
single object that attribution code hooks and restores.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from convlens._hooks import evaluation_mode
from convlens.errors import ConvlensError, LayerError, ModelLoadError, UnsupportedModelError
from convlens.io.images import load_image
from convlens.models.layers import LayerInfo, default_layer_name, list_layers
from convlens.models.outputs import OutputKey, model_failure, select_output
from convlens.preprocessing import Geometry, Preprocessing

ImageLike = Union[str, "Image.Image", np.ndarray, Any]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; otherwise as given, validated."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but CUDA is not available here; "
                             "use --device cpu or auto")
    return resolved


@dataclass
class Prepared:
    """A preprocessed batch with what presentation needs to map results back to photos.

    ``images`` holds the in-memory photos given (None for files, which are decoded again
    when shown: the network's input may come from a reduced decode); ``geometries`` place
    each input in its full-size photo.
    """

    x: torch.Tensor
    images: list[Image.Image | None]
    geometries: list[Geometry]

    def __len__(self) -> int:
        """How many images (rows of ``x``)."""
        return int(self.x.shape[0])


class Classifier:
    """A network, its labels, its preprocessing and its device.

    Args:
        module: Any ``nn.Module`` mapping ``(N, C, H, W)`` to logits ``(N, classes)``.
        labels: Class names in output order; default ``"class 0"``, ``"class 1"``...
        input_size, resize, resize_size, mean, std, interpolation: see
            :class:`~convlens.preprocessing.Preprocessing`.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``... The module is
            moved there (``module.to`` is the one change we make, at the user's request).
        name: A display name.
        output: For a module returning a tuple or dict: which output holds the logits (an
            index or a key); default the first tensor (see
            :func:`~convlens.attribution.targets.select_output`).

    Example:
        >>> clf = Classifier(torchvision.models.resnet18(), labels=names)  # doctest: +SKIP
        >>> clf.predict(["cat.jpg"], top=3)                                # doctest: +SKIP
    """

    def __init__(self, module: nn.Module, labels: Sequence[str] | None = None, *,
                 input_size: int | tuple[int, int] = 224, resize: str = "center_crop",
                 resize_size: int | tuple[int, int] | None = None,
                 mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, interpolation: str = "bilinear",
                 device: str | torch.device | None = "auto", name: str | None = None,
                 output: OutputKey = None) -> None:
        if not isinstance(module, nn.Module):
            raise ModelLoadError(
                f"Classifier needs a torch.nn.Module, got {type(module).__name__}"
            )
        kwargs: dict[str, Any] = {"input_size": input_size, "resize": resize,
                                  "resize_size": resize_size, "interpolation": interpolation}
        if mean is not None:
            kwargs["mean"] = tuple(mean)
        if std is not None:
            kwargs["std"] = tuple(std)
        self.preprocessing = Preprocessing(**kwargs)
        self.device = resolve_device(device)
        self.module = module.to(self.device)
        self.labels = list(labels) if labels is not None else None
        self.name = name or type(module).__name__
        self.output = output
        self._default_layers: dict[tuple[int, ...], str] = {}

    def __repr__(self) -> str:
        classes = len(self.labels) if self.labels else "?"
        return (f"Classifier({self.name}, classes={classes}, device={self.device}, "
                f"input={self.preprocessing.input_size})")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return select_output(self.module(x), self.output)

    def to(self, device: str | torch.device) -> Classifier:
        """Move the network; returns self."""
        self.device = resolve_device(device)
        self.module.to(self.device)
        self._default_layers.clear()
        return self

    def with_module(self, module: nn.Module, *, name: str | None = None) -> Classifier:
        """A Classifier of ``module`` with this one's labels, preprocessing, output and device
        (a corrected copy of the network, convlens 12); this Classifier is unchanged."""
        twin = copy.copy(self)
        twin.module = module.to(self.device)
        twin.name = name or self.name
        twin._default_layers = {}
        return twin

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one preprocessed input."""
        height, width = self.preprocessing.input_size
        return (self.preprocessing.channels, height, width)

    def default_layer(self, sample_shape: Sequence[int] | None = None) -> str:
        """The layer CAMs use by default: the last one with a spatial output.

        Derived once per input shape (default: :attr:`sample_shape`) by one probe pass and
        cached here, so ``attribute``, ``explain`` and the CLI agree and none recomputes it.

        Raises:
            LayerError: when no layer has a spatial output for that shape.
            InputShapeError: when the model fails on an input of that shape.
        """
        key = tuple(int(v) for v in (sample_shape or self.sample_shape))
        if key not in self._default_layers:
            try:
                self._default_layers[key] = default_layer_name(self.module, key, self.device)
            except (RuntimeError, ValueError, TypeError, IndexError) as error:
                if isinstance(error, ConvlensError):
                    raise

                raise model_failure(torch.empty(1, *key), error) from error
        return self._default_layers[key]

    @torch.no_grad()
    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The selected output (see ``output``) in eval mode, unchecked: any shape."""
        with evaluation_mode(self.module):
            return select_output(self.module(x), self.output)

    def label(self, index: int) -> str:
        """The name of class ``index`` (``"class 7"`` when labels are unknown)."""
        if self.labels is not None and 0 <= index < len(self.labels):
            return self.labels[index]
        return f"class {index}"

    def prepare(self, images: ImageLike | Sequence[ImageLike]) -> Prepared:
        """Decode and preprocess images, keeping in-memory originals and every geometry.

        Files go through :meth:`Preprocessing.load_file
        <convlens.preprocessing.Preprocessing.load_file>` (JPEGs decoded at reduced
        size, the same pixels as audit and evaluate); their entry in ``images`` is None
        (decode the photo with :func:`~convlens.io.images.load_image` to display it).
        """
        items = images if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise ModelLoadError("no images given")
        originals, tensors, geometries = [], [], []
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                tensor, geometry, image = self.preprocessing.load_file(item)
            else:
                image = load_image(item)
                resized, geometry = self.preprocessing.resize_image(image)
                tensor = self.preprocessing.to_tensor(resized)
            originals.append(image)
            tensors.append(tensor)
            geometries.append(geometry)
        return Prepared(torch.stack(tensors).to(self.device), originals, geometries)

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Paths, PIL images or arrays -> normalised batch ``(N, C, H, W)`` on the device."""
        return self.prepare(images).x

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits in eval mode, leaving the module's training flags as they were."""
        with evaluation_mode(self.module):
            out = select_output(self.module(x), self.output)
        self._check_outputs(out)
        return out

    def _check_outputs(self, logits: torch.Tensor) -> None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ModelLoadError(f"the model must return logits (N, classes), got {shape}")
        if self.labels is not None and logits.shape[1] != len(self.labels):
            raise ModelLoadError(
                f"the model has {logits.shape[1]} outputs but {len(self.labels)} labels were "
                "given; pass a labels file with one name per output"
            )

    def predict(self, images: ImageLike | Sequence[ImageLike] | torch.Tensor, top: int = 5
                ) -> list[list[tuple[str, float]]]:
        """Top classes per image, as ``[(label, probability), ...]``, best first."""
        x = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        probabilities = self.logits(x).softmax(dim=1)
        top = max(1, min(int(top), probabilities.shape[1]))
        values, indices = probabilities.topk(top, dim=1)
        return [
            [(self.label(int(i)), float(v)) for v, i in zip(row_v, row_i)]
            for row_v, row_i in zip(values.cpu(), indices.cpu())
        ]


ModelLike: TypeAlias = Classifier | nn.Module
"""What the public entry points accept: a :class:`Classifier`, or a bare ``nn.Module`` that
:func:`as_classifier` wraps (ImageNet preprocessing, the module's own device)."""


def as_classifier(model: object) -> Classifier:
    """A :class:`Classifier` for "a Classifier or an ``nn.Module``", the one adapter.

    A Classifier is returned as is. A bare module is wrapped without being moved (the
    device is its parameters' device) and with the ImageNet defaults of
    :class:`~convlens.preprocessing.Preprocessing` (224 x 224, 3 channels); it is a
    fresh wrapper each call, so nothing is stored on the user's module.

    Raises:
        UnsupportedModelError: for anything else.
    """
    if isinstance(model, Classifier):
        return model
    if isinstance(model, nn.Module):
        tensor = next(iter(model.parameters()), None)
        if tensor is None:
            tensor = next(iter(model.buffers()), None)
        device = tensor.device if tensor is not None else torch.device("cpu")
        labels = getattr(model, "labels", None)  # a module that carries its class names
        if not (isinstance(labels, (list, tuple)) and all(isinstance(n, str) for n in labels)):
            labels = None
        return Classifier(model, device=device, labels=labels)
    raise UnsupportedModelError(
        f"model must be a torch.nn.Module or a convlens.Classifier, got {type(model).__name__}"
    )


def layers(model: object) -> list[LayerInfo]:
    """Every layer's name, type and output shape (for one sample), to choose ``layer=``.

    Lives beside :class:`Classifier` (not in ``layers.py``, which it uses) so that
    ``layers.py`` never imports this module: docs/architecture.md, "Layers and the direction
    data flows".

    Args:
        model: A Classifier (its input size is used) or an ``nn.Module`` taking
            ``(N, 3, 224, 224)`` inputs.

    Example:
        >>> [info.name for info in layers(classifier)][:3]  # doctest: +SKIP
        ['stem', 'stem.conv', 'stem.bn']
    """
    if not isinstance(model, (Classifier, nn.Module)):
        raise LayerError(f"layers() needs a Classifier or a torch.nn.Module, got "
                         f"{type(model).__name__}")
    classifier = as_classifier(model)
    return list_layers(classifier.module, classifier.sample_shape, classifier.device)
