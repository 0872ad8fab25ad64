"""What to visualize, as ``convlens visualize`` asks for it: a layer's channels or neurons,
the whole layer (DeepDream) or output classes, and the photo DeepDream starts from.

:func:`objectives_for` turns those choices into objectives (:mod:`.objectives`), checking
the channels against the layer; :func:`start_photo` sizes a DeepDream photo the way the
optimisation will use it. The command line only parses its options and calls these and
:func:`convlens.visualization.optimize.visualize`.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from convlens.errors import ObjectiveError
from convlens.models.classifier import Classifier, layers
from convlens.models.layers import resolve_layer
from convlens.visualization import objectives as obj
from convlens.visualization.objectives import Objective

MAX_DEFAULT_CHANNELS = 16


def parse_channels(text: str) -> list[int]:
    """``"0-15"``, ``"3,5,9"`` or ``"0-3,8"`` -> channel indices, in the order given.

    Example:
        >>> parse_channels("0-2,7")
        [0, 1, 2, 7]
    """
    channels: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, sep, last = part.partition("-")
        try:
            low = int(first)
            high = int(last) if sep else low
        except ValueError:
            raise ObjectiveError(f"--channels takes indices and ranges like 0-15 or 3,5,9; "
                                 f"got {text!r}") from None
        if low < 0 or high < low:
            raise ObjectiveError(f"--channels: bad range {part!r} (expected LOW-HIGH with "
                                 "0 <= LOW <= HIGH)")
        channels.extend(range(low, high + 1))
    if not channels:
        raise ObjectiveError("--channels needs at least one index, e.g. 0-15")
    return channels


def layer_channels(classifier: Classifier, layer: str) -> int:
    """The number of channels of ``layer``'s output (a clear error for a bad name)."""
    name, _ = resolve_layer(classifier.module, layer)
    for info in layers(classifier):
        if info.name == name and info.output_shape:
            return int(info.output_shape[0])
    raise ObjectiveError(f"layer {layer!r} did not produce a tensor output; choose another "
                         "(see `convlens layers`)")


def objectives_for(classifier: Classifier, *, layer: str | None = None, channels: str | None = None,
                   classes: Sequence[str] = (), neuron: bool = False,
                   whole_layer: bool = False) -> list[Objective]:
    """The objectives of one ``convlens visualize`` run.

    Args:
        classifier: The Classifier (a layer's channels are counted on it).
        layer: A layer whose channels (or neurons) to excite; or give ``classes``.
        channels: Channel indices and ranges (``"0-15"``, ``"3,5,9"``); default the first
            :data:`MAX_DEFAULT_CHANNELS`.
        classes: Class names or indices (as text) whose logits to raise.
        neuron: Excite each channel's centre neuron instead of the whole channel.
        whole_layer: Without ``channels`` and ``neuron``, one objective for the whole layer
            (DeepDream from a photo).

    Raises:
        ObjectiveError: Neither or both of ``layer`` and ``classes``; ``neuron`` or
            ``channels`` with ``classes``; a bad or out-of-range channel.
    """
    if (layer is None) == (not classes):
        raise ObjectiveError("give either --layer LAYER (channels of a layer) or --class "
                             "NAME|INDEX (output classes), not both and not neither")
    if classes:
        if neuron or channels:
            raise ObjectiveError("--neuron and --channels go with --layer, not --class")
        return [obj.class_logit(c) for c in classes]
    if channels is None and whole_layer and not neuron:
        return [obj.layer(layer)]
    count = layer_channels(classifier, layer)
    indices = (parse_channels(channels) if channels is not None
               else list(range(min(count, MAX_DEFAULT_CHANNELS))))
    bad = [k for k in indices if k >= count]
    if bad:
        raise ObjectiveError(f"channel {bad[0]} is out of range: layer {layer!r} has {count} "
                             f"channels (valid: 0..{count - 1})")
    make = obj.neuron if neuron else obj.channel
    return [make(layer, k) for k in indices]


def start_photo(classifier: Classifier, photo: Image.Image, *, size: int | None = None,
                resize: bool = False) -> Image.Image:
    """The DeepDream start photo at the size the optimisation will use.

    With ``resize`` (``--resize`` given) the photo becomes the model's input as the model
    sees it (cropped, squashed or padded). Otherwise ``size`` squares it; without it the
    aspect ratio stays and the shorter side becomes the model's input size (as
    :func:`convlens.visualize` does for a photo), so a large photo allowed by
    ``--max-pixels`` is shrunk here rather than checked again.
    """
    if resize:
        return classifier.preprocessing.resize_image(photo)[0]
    if size is not None:
        target = (size, size)
    else:
        scale = min(classifier.preprocessing.input_size) / min(photo.size)
        target = (max(8, round(photo.width * scale)), max(8, round(photo.height * scale)))
    return photo if photo.size == target else photo.resize(target, Image.Resampling.BICUBIC)
