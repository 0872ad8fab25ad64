"""The optimisation loop of feature visualization: :func:`visualize`.

One call builds a parameterised image batch, then for ``steps`` steps: image -> random
transforms -> the model's normalisation -> forward (stopped after the deepest layer an
objective reads) -> objective -> gradient to the image parameters only -> Adam. Hooks
exist only inside the call (:class:`~convlens._hooks.HookSession`), the model runs in
eval mode and is handed back exactly as it came: no gradient is accumulated on its
parameters (we ask autograd for the image's gradient alone), its training flags are
restored.

What this costs: one step is a forward and a backward to the image of the part of the
network the objectives need, plus the parameterisation (an inverse FFT) and the transforms
(one resampling), a few percent of a forward on a CNN (see benchmarks/bench_visualization.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from convlens._hooks import HookSession, evaluation_mode, gradients_enabled
from convlens.errors import (
    ConvlensError,
    InputShapeError,
    LayerError,
    ObjectiveError,
    UnsupportedModelError,
)
from convlens.files import ensure_folder, save_image_atomic
from convlens.io.images import load_image
from convlens.models.classifier import Classifier, ModelLike, as_classifier
from convlens.models.layers import resolve_layer
from convlens.progress import ProgressCallback, ProgressLike, emit, resolve_progress
from convlens.visualization import transforms as transforms_module
from convlens.visualization.inspection import file_stem, image_grid, to_pil
from convlens.visualization.objectives import LOGITS, Context, Objective, as_objective
from convlens.visualization.param import ImageParam, make_param

__all__ = ["Visualization", "visualize"]


@dataclass
class Visualization:
    """The result of :func:`visualize`.

    Attributes:
        images: ``(B, 3, H, W)`` float tensor in [0, 1] on the model's device, without the
            robustness transforms (what the parameterisation holds at the end).
        trace: ``(steps, K)`` float32 CPU tensor: the value of each of the K objectives at
            every step, measured on that step's transformed image before its update.
            K is 1 for a single objective (which may span a batch), else one per objective.
        names: The K objectives' names.
        seconds: Wall time of the optimisation.
        snapshots: Step -> images after that many steps, for the steps asked for.
    """

    images: torch.Tensor
    trace: torch.Tensor
    names: list[str]
    seconds: float
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)

    def pil(self) -> list[Image.Image]:
        """The images as RGB PIL images."""
        return [to_pil(image) for image in self.images]

    def grid(self, columns: int | None = None, *, captions: bool = True,
             tile: int | None = None) -> Image.Image:
        """All images in one grid, captioned with the objective names when K matches."""
        labels = self.names if captions and len(self.names) == len(self.images) else None
        return image_grid(self.pil(), columns=columns, captions=labels, tile=tile)

    def save(self, directory: str | Path, *, grid: bool = True) -> list[Path]:
        """Write one PNG per image (named after its objective) and ``grid.png``."""
        directory = ensure_folder(directory)
        paths, used = [], set()
        for index, image in enumerate(self.pil()):
            name = self.names[index] if len(self.names) == len(self.images) else (
                f"{self.names[0]}_{index}")
            stem = file_stem(name, used)
            paths.append(save_image_atomic(image, directory / f"{stem}.png"))
        if grid:
            paths.append(save_image_atomic(self.grid(), directory / "grid.png"))
        return paths

    def _repr_png_(self) -> bytes:  # notebooks show the grid
        import io

        buffer = io.BytesIO()
        self.grid().save(buffer, format="PNG")
        return buffer.getvalue()


class _StopForward(Exception):
    """Raised from the hook of the deepest needed layer to skip the rest of the network."""


class _Tap:
    """Captures the layers objectives read and stops the forward pass after the last one.

    The first pass runs the whole model and counts how often each needed module fires
    (a module may be called twice, like torchvision's shared ReLU); later passes stop as
    soon as every needed module has fired that often, unless the logits are needed.
    """

    def __init__(self, hooks: HookSession, model: nn.Module, keys: Iterable[Any],
                 need_logits: bool) -> None:
        self.model = model
        self.need_logits = need_logits
        self.keys_of: dict[nn.Module, list[Any]] = {}
        self.names: dict[nn.Module, str] = {}
        for key in keys:
            name, module = resolve_layer(model, key)
            self.keys_of.setdefault(module, []).append(key)
            self.names[module] = name
        self.calls: dict[nn.Module, int] = {}
        self.expected: dict[nn.Module, int] | None = None
        self.activations: dict[Any, torch.Tensor] = {}
        for module in self.keys_of:
            hooks.forward_hook(module, self._hook)

    def _hook(self, module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise LayerError(f"layer {self.names[module]!r} returns {type(output).__name__}, "
                             "not a tensor; choose a layer with a single tensor output")
        self.calls[module] = self.calls.get(module, 0) + 1
        for key in self.keys_of[module]:
            self.activations[key] = output
        expected = self.expected
        if expected is not None and not self.need_logits and all(
                self.calls.get(m, 0) >= n for m, n in expected.items()):
            raise _StopForward
        return output.clone()  # the network goes on with a copy: in-place ops can't touch ours

    def run(self, x: torch.Tensor) -> dict[Any, torch.Tensor]:
        self.activations = {}
        self.calls = {}
        try:
            output = self.model(x)
        except _StopForward:
            output = None
        except ConvlensError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            raise InputShapeError(
                f"the model failed on an image batch of shape {tuple(x.shape)}: "
                f"{str(error).splitlines()[0]}. The robustness transforms change the image "
                "size; if the model needs a fixed size pass transforms='none' and size= that size"
            ) from error
        if self.expected is None:
            missing = [self.names[m] for m in self.keys_of if self.calls.get(m, 0) == 0]
            if missing:
                raise LayerError(f"layer {missing[0]!r} did not run during the forward pass; "
                                 "choose a layer the model's forward calls (see `convlens layers`)")
            self.expected = dict(self.calls)
        activations = dict(self.activations)
        if self.need_logits:
            if not isinstance(output, torch.Tensor) or output.dim() != 2:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
                raise UnsupportedModelError(f"class objectives need the model to return logits "
                                            f"(N, classes); it returned {shape}")
            activations[LOGITS] = output
        return activations


@dataclass
class _ModelParts:
    module: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    labels: Sequence[str] | None
    device: torch.device
    dtype: torch.dtype
    input_size: tuple[int, int]


def _model_parts(model: ModelLike, mean: Sequence[float] | None, std: Sequence[float] | None
                 ) -> _ModelParts:
    if not isinstance(model, (Classifier, nn.Module)):
        raise UnsupportedModelError(f"visualize needs a convlens Classifier or a torch.nn.Module, "
                                    f"got {type(model).__name__}")
    classifier = as_classifier(model)  # a bare module gets the ImageNet preprocessing
    module, pre = classifier.module, classifier.preprocessing
    mean = pre.mean if mean is None else mean
    std = pre.std if std is None else std
    labels, device, input_size = classifier.labels, classifier.device, pre.input_size
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.float32
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise ObjectiveError(f"mean and std need 1 or 3 values each, got {len(mean)} and "
                             f"{len(std)}")
    shape = (1, len(mean), 1, 1)
    with torch.inference_mode(False):  # normal tensors even inside the caller's inference_mode
        mean_t = torch.tensor(mean, dtype=dtype, device=device).view(shape)
        std_t = torch.tensor(std, dtype=dtype, device=device).view(shape)
    return _ModelParts(module, mean_t, std_t, labels, torch.device(device), dtype,
                       tuple(input_size))


def _size(size: int | Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return default
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 8:
        raise ObjectiveError(f"size must be an int or (height, width) of at least 8 pixels, "
                             f"got {size!r}")
    return size  # type: ignore[return-value]


def _init_images(init: Any, size: tuple[int, int] | None, batch: int, parts: _ModelParts
                 ) -> torch.Tensor:
    """Start images (B, 3, H, W) in [0, 1] from tensors, paths, PIL images or arrays.

    Without ``size``, a photo keeps its aspect ratio with the shorter side at the model's
    input size.
    """
    import torch.nn.functional as F

    if isinstance(init, torch.Tensor):
        images = init.detach()
        if images.dim() == 3:
            images = images[None]
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputShapeError(f"init must be (3, H, W) or (B, 3, H, W) in [0, 1], got "
                                  f"{tuple(init.shape)}")
        if images.min() < 0 or images.max() > 1:
            raise InputShapeError("init tensors must hold pixels in [0, 1] (not normalised "
                                  "model inputs); pass the photo itself")
        images = images.to(device=parts.device, dtype=parts.dtype)
        if size is not None and tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    else:
        items = init if isinstance(init, (list, tuple)) else [init]
        tensors = []
        for item in items:
            photo = load_image(item)
            if size is None:
                side = min(parts.input_size)
                scale = side / min(photo.size)
                target = (max(8, round(photo.height * scale)), max(8, round(photo.width * scale)))
                size = target
            photo = photo.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            array = torch.frombuffer(bytearray(photo.tobytes()), dtype=torch.uint8)
            tensors.append(array.view(size[0], size[1], 3).permute(2, 0, 1).float() / 255)
        images = torch.stack(tensors).to(device=parts.device, dtype=parts.dtype)
    if images.shape[0] == 1 and batch > 1:
        images = images.expand(batch, -1, -1, -1)
    if images.shape[0] != batch:
        raise InputShapeError(f"{images.shape[0]} start images for a batch of {batch}; give one "
                              "image (shared) or one per objective")
    return images


def _goals(objective: Any, batch: int | None) -> tuple[list[Objective], int]:
    """Objectives to sum and the batch size: a list renders one objective per image."""
    if isinstance(objective, (list, tuple)):
        if not objective:
            raise ObjectiveError("no objectives given")
        items = [as_objective(o) for o in objective]
        if batch is not None and batch != len(items):
            raise ObjectiveError(f"batch={batch} but {len(items)} objectives were given; a list "
                                 "renders one image per objective (leave batch out)")
        return [o.on_batch(i) for i, o in enumerate(items)], len(items)
    if batch is not None and batch < 1:
        raise ObjectiveError(f"batch must be >= 1, got {batch}")
    return [as_objective(objective)], batch or 1


def check_arguments(*, steps: Any = 256, size: Any = None, lr: Any = None, seed: Any = 0,
                    time_limit: Any = None) -> None:
    """Validate :func:`visualize`'s numeric arguments before any model work.

    Raises:
        ObjectiveError: ``steps`` is not an int >= 0, ``lr`` not a finite number > 0,
            ``seed`` not an int in 0..2**64-1, ``size`` not an int or (height, width) of at
            least 8, or ``time_limit`` not a number >= 0. Without this, torch would raise
            from inside Adam or the generator (``Invalid learning rate: -1.0``).
    """
    import math
    import numbers

    def is_int(value: Any) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    if not is_int(steps) or steps < 0:
        raise ObjectiveError(f"steps must be an int >= 0 (CLI: --steps), got {steps!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, numbers.Real)
                           or not math.isfinite(lr) or lr <= 0):
        raise ObjectiveError(f"lr must be a number > 0 (CLI: --lr), e.g. 0.05; got {lr!r}")
    if not is_int(seed) or not 0 <= seed < 2**64:
        raise ObjectiveError(f"seed must be an int in 0..2**64-1 (CLI: --seed), got {seed!r}")
    if time_limit is not None and (isinstance(time_limit, bool)
                                   or not isinstance(time_limit, numbers.Real)
                                   or not time_limit >= 0):
        raise ObjectiveError(f"time_limit must be a number of seconds >= 0, got {time_limit!r}")
    if size is not None:
        if is_int(size):
            size = (size, size)
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(is_int(side) for side in size) or min(size) < 8):
            raise ObjectiveError(f"size must be an int or (height, width) of at least 8 "
                                 f"pixels (CLI: --size), got {size!r}")


def visualize(
    model: ModelLike,
    objective: Objective | str | Sequence[Objective | str],
    *,
    size: int | Sequence[int] | None = None,
    steps: int = 256,
    lr: float | None = None,
    seed: int = 0,
    param: str | ImageParam = "fft",
    decorrelate: bool = True,
    transforms: transforms_module.TransformLike = "standard",
    batch: int | None = None,
    init: Any = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    snapshots: Iterable[int] = (),
    time_limit: float | None = None,
    progress: ProgressLike = None,
    callback: Callable[[int, torch.Tensor, torch.Tensor], Any] | None = None,
) -> Visualization:
    """Optimise images to maximise an objective (activation maximisation, Lucid-style).

    Follows Olah et al. 2017 ("Feature Visualization", Distill): Fourier-space
    parameterisation with ``1/f`` scaling in a decorrelated colour space, random
    transforms at every step, Adam. Deviation: Lucid samples transforms per step with
    NumPy's global RNG; here all randomness (the initial noise and the transforms) comes
    from one ``torch.Generator`` seeded with ``seed``, so a run is reproducible.

    Args:
        model: A :class:`~convlens.Classifier` (its normalisation, input size, labels and
            device are used) or an ``nn.Module`` (ImageNet mean/std unless given).
        objective: An objective, a shorthand (``"blocks.8:12"``, ``"class:281"``), or a
            list of them: a list renders one image per objective in one batched
            optimisation (objective i sees only image i).
        size: Image size, int or ``(height, width)``; default the model's input size (or
            the start photo's, shorter side at the input size).
        steps: Optimiser steps (0 returns the start images).
        lr: Adam learning rate; default the parameterisation's (0.05 fft/pixel, 0.005 cppn).
        seed: Seeds the initial noise and the transforms.
        param: ``"fft"`` (default), ``"pixel"``, ``"cppn"`` or an ``ImageParam``.
        decorrelate: Optimise in the decorrelated colour space (fft and pixel).
        transforms: ``"standard"`` (default), ``"lucid"``, ``"none"``/None, a transform or
            a list (see :mod:`convlens.visualization.transforms`).
        batch: Images for a single objective (e.g. with ``obj.diversity``); default 1.
        init: Start from photo(s) instead of noise (DeepDream): path, PIL image, array or
            ``(B, 3, H, W)`` tensor in [0, 1].
        mean, std: Override the normalisation applied before the forward.
        snapshots: Steps after which to keep a copy of the images.
        time_limit: Stop early after this many seconds (the trace is then shorter).
        progress: A :data:`~convlens.progress.ProgressCallback` receiving ``visualize``
            events every few steps, ``True`` (plain lines, or a bar in a notebook),
            ``False``/None for silence (see :func:`convlens.progress.resolve_progress`).
        callback: Called after every step as ``callback(step, images, values)`` with that
            step's images (before its update, detached, untransformed) and the K objective
            values; for live previews, custom logging or timing.

    Returns:
        A :class:`Visualization` (``images``, ``trace``, ``names``...).

    Example:
        >>> from convlens import objectives as obj                    # doctest: +SKIP
        >>> res = visualize(clf, obj.channel("blocks.8", 12), steps=256)  # doctest: +SKIP
        >>> res.images.shape                                            # doctest: +SKIP
        torch.Size([1, 3, 224, 224])
    """
    check_arguments(steps=steps, size=size, lr=lr, seed=seed, time_limit=time_limit)
    parts = _model_parts(model, mean, std)
    goals, batch = _goals(objective, batch)
    size_hw = None if size is None else _size(size, parts.input_size)
    start = None
    if init is not None and isinstance(param, ImageParam):
        raise ObjectiveError("init= starts a built-in parameterisation from a photo; a ready "
                             "ImageParam brings its own start, so give one or the other")
    if init is not None:
        start = _init_images(init, size_hw, batch, parts)
        size_hw = tuple(start.shape[-2:])
    size_hw = size_hw or parts.input_size
    generator = torch.Generator().manual_seed(int(seed))
    transform = transforms_module.resolve(transforms)
    keys = frozenset().union(*(g.layers for g in goals))
    keep = {int(s) for s in snapshots}
    kept: dict[int, torch.Tensor] = {}
    values_per_step: list[torch.Tensor] = []
    began = time.perf_counter()
    bar = _StepProgress(resolve_progress(progress), steps)
    # parameters are made with autograd on, even inside the caller's inference_mode
    with HookSession() as hooks, evaluation_mode(parts.module), gradients_enabled():
        image_param = make_param(param, batch, size_hw, generator=generator,
                                 device=parts.device, dtype=parts.dtype,
                                 decorrelate=decorrelate, init=start)
        tensors = image_param.parameters()
        optimizer = torch.optim.Adam(tensors,
                                     lr=image_param.default_lr if lr is None else lr)
        tap = _Tap(hooks, parts.module, keys - {LOGITS}, LOGITS in keys)
        for step in range(steps):
            if step in keep:
                kept[step] = image_param().detach()
            image = image_param()
            x = transform(image, generator) if transform is not None else image
            if parts.mean.shape[1] == 1:
                x = x.mean(dim=1, keepdim=True)
            activations = tap.run((x - parts.mean) / parts.std)
            context = Context(activations, image, parts.labels)
            values = torch.stack([goal(context).reshape(()) for goal in goals])
            if not values.requires_grad:
                raise ObjectiveError("the objective does not depend on the image; check "
                                     "the layers and objectives given")
            grads = torch.autograd.grad(-values.sum(), tensors, allow_unused=True)
            for tensor, grad in zip(tensors, grads):
                tensor.grad = torch.zeros_like(tensor) if grad is None else grad
            optimizer.step()
            values_per_step.append(values.detach())
            bar.advance(step, values_per_step)
            if callback is not None:
                callback(step, image.detach(), values.detach())
            if time_limit is not None and time.perf_counter() - began > time_limit:
                break
        with torch.no_grad():
            images = image_param().detach()
    bar.finish(len(values_per_step))
    if steps in keep or len(values_per_step) in keep:
        kept[len(values_per_step)] = images
    trace = (torch.stack(values_per_step).float().cpu() if values_per_step
             else torch.empty(0, len(goals)))
    names = [g.name for g in goals]
    return Visualization(images, trace, names, time.perf_counter() - began, kept)


class _StepProgress:
    """Reports optimisation steps as ``visualize`` events, every few steps (reading the
    objective value syncs CUDA, so not at every step). The library never draws; the CLI
    passes its own callback (docs/architecture.md, "Layers and the direction data flows")."""

    def __init__(self, callback: ProgressCallback | None, steps: int) -> None:
        self.callback = callback if steps > 0 else None
        self.steps = steps
        self.every = max(1, steps // 50)
        emit(self.callback, "visualize", 0, steps)

    def advance(self, step: int, values: list[torch.Tensor]) -> None:
        if self.callback is not None and (step % self.every == 0 or step == self.steps - 1):
            emit(self.callback, "visualize", step + 1, self.steps,
                 f"objective {float(values[-1].mean()):.3g}")

    def finish(self, reached: int) -> None:
        """A run stopped early by ``time_limit`` ends its stage at the steps it reached."""
        if self.callback is not None and reached < self.steps:
            emit(self.callback, "visualize", reached, reached,
                 f"stopped early: {reached} of {self.steps} steps")
