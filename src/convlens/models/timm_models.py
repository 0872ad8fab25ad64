"""``timm:NAME`` models: timm architectures with local weights and their own preprocessing.

timm (PyTorch Image Models, an optional extra: ``pip install 'convlens[timm]'``) builds the
architecture by name with ``pretrained=False``; the weights always come from a local file
(read by :func:`convlens.models.weights.read_state_dict`: safetensors or a plain state
dict, never unpickled unless ``trust_model``). Nothing is downloaded: the Hugging Face Hub
is put offline (``HF_HUB_OFFLINE=1``) for the duration of the call, and names that point
at the Hub (``hf-hub:...``) are refused.

The preprocessing is the model's own: ``timm.data.resolve_data_config`` gives the input
size, mean, std, interpolation, ``crop_pct`` and ``crop_mode``, and
:class:`~convlens.preprocessing.Preprocessing` repeats the arithmetic of timm's own
evaluation transform (``timm.data.create_transform``) pixel for pixel (docs/architecture.md,
"Models"). A state dict whose classifier has another number of classes than the named
model (a fine-tuned checkpoint) builds the model with that many classes.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from convlens.errors import ModelLoadError
from convlens.models.weights import load_weights, read_state_dict
from convlens.preprocessing import DEFAULT_CROP_PCT

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
_CROP_MODES = {"center": "center_crop", "squash": "squash", "border": "pad"}


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` (and ``TRANSFORMERS_OFFLINE=1``) inside the block, restored after."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: "1" for key in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ModelLoadError(
            "timm:NAME models need timm: pip install 'convlens[timm]'") from None
    return timm


def _create(timm: Any, name: str, **kwargs: Any) -> nn.Module:
    try:
        with offline_hub():
            return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as error:
        if "Unknown model" not in str(error):
            raise ModelLoadError(f"timm could not build {name!r}: {error}") from None
        close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.75)
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise ModelLoadError(f"unknown timm model {name!r}{hint} (see timm.list_models())"
                             ) from None


def preprocessing_options(model: nn.Module) -> dict[str, Any]:
    """The model's own evaluation preprocessing as :class:`Classifier` options.

    From ``timm.data.resolve_data_config({}, model=model)``, the arguments of timm's
    ``transforms_imagenet_eval``: ``input_size`` (C, H, W), ``mean``, ``std``,
    ``interpolation``, and the scale size ``floor(side / crop_pct)`` per side as
    ``resize_size`` (an int when both sides agree: torchvision's ``Resize(int)``), with the
    crop mode: ``"center"`` -> ``center_crop``, ``"squash"`` -> ``squash``, ``"border"`` ->
    ``pad``. :class:`~convlens.preprocessing.Preprocessing` repeats timm's arithmetic,
    so the tensors are timm's to float precision.
    """
    timm = _timm()
    config = timm.data.resolve_data_config({}, model=model)
    _, height, width = config["input_size"]
    interpolation = config.get("interpolation", "bilinear")
    crop_pct = float(config.get("crop_pct") or DEFAULT_CROP_PCT)
    scale = (math.floor(int(height) / crop_pct), math.floor(int(width) / crop_pct))
    return {
        "input_size": (int(height), int(width)),
        "mean": tuple(float(v) for v in config["mean"]),
        "std": tuple(float(v) for v in config["std"]),
        "interpolation": interpolation if interpolation in _INTERPOLATIONS else "bilinear",
        "resize": _CROP_MODES.get(config.get("crop_mode") or "center", "center_crop"),
        "resize_size": scale[0] if scale[0] == scale[1] else scale,
    }


def _classes_in(state: dict[str, Any], model: nn.Module) -> int | None:
    """Number of classes of the state dict's classifier, when it differs from the model's."""
    head = getattr(model, "pretrained_cfg", {}).get("classifier")
    heads = head if isinstance(head, (list, tuple)) else [head] if head else []
    for name in heads:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.dim() >= 1:
            classes = int(weight.shape[0])
            return None if classes == getattr(model, "num_classes", classes) else classes
    return None


def load_timm(name: str, weights: str | Path | None, *, trust_model: bool = False
              ) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``timm.create_model(name, pretrained=False)`` and load local ``weights``.

    Returns:
        The module (in eval mode is set by the caller) and its preprocessing options.

    Raises:
        ModelLoadError: timm missing, an unknown or Hub name, no weights file, or weights
            that do not fit the architecture.
    """
    if not name or name.startswith(("hf-hub:", "hf_hub:")) or "/" in name:
        raise ModelLoadError(
            f"timm:{name} names a model on the Hugging Face Hub; convlens never downloads. "
            "Give an architecture name (timm:resnet50) and a local weights file (weights=)")
    if weights is None:
        raise ModelLoadError(
            f"timm:{name} needs a local weights file (weights=..., CLI: --weights): convlens "
            "never downloads pretrained weights at run time. Save them once with "
            "safetensors.torch.save_file(model.state_dict(), 'w.safetensors')")
    timm = _timm()
    model = _create(timm, name)
    state = read_state_dict(weights, trust_model=trust_model)
    classes = _classes_in(state, model)
    if classes is not None:
        model = _create(timm, name, num_classes=classes)
    load_weights(model, weights, trust_model=trust_model)
    return model, preprocessing_options(model)
