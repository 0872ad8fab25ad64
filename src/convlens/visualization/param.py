"""Image parameterisations: what the optimiser actually changes.

Feature visualization optimises an image, but *how* the image is written down changes
what gradient ascent finds (Olah et al. 2017, "Feature Visualization", section
"Preconditioning and parameterization"; Mordvintsev et al. 2018, "Differentiable Image
Parameterizations"):

* ``"fft"`` (default): the image is the inverse real FFT of a learned spectrum whose
  entries are scaled by ``1 / f`` (``f``: spatial frequency in cycles per pixel, floored at
  ``1 / max(H, W)``). Every frequency then gets a step of similar *visual* size, where
  plain pixels let the optimiser pile up high-frequency noise first.
* ``"pixel"``: one free value per pixel and channel (the naive baseline).
* ``"cppn"``: a small compositional pattern-producing network maps pixel coordinates to
  colours (one network per batch image). Smooth, scale-free images; it wants a smaller
  learning rate (its default 0.005) and more steps.

``"fft"`` and ``"pixel"`` work in a *decorrelated colour space* by default: three latent
channels along the principal components of natural images' RGB covariance, mixed into
RGB by :data:`COLOUR_BASIS`, then a sigmoid maps to [0, 1]. Gradient steps are then
whitened in colour as the FFT scaling whitens them in space.

:data:`COLOUR_BASIS` is our own estimate (Lucid ships one from ImageNet): the covariance
of the RGB values, in [0, 1], of scikit-image's five bundled colour photos (astronaut,
chelsea, coffee, rocket, motorcycle left); each eigenvector scaled by the square root of
its eigenvalue, largest first, the whole normalised so the largest column has norm 1.
:func:`colour_basis` recomputes it; a unit test checks the constant against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from convlens.errors import ObjectiveError, unknown_choice

# Rows: R, G, B. Columns: luminance, red-blue, green-magenta components.
COLOUR_BASIS = (
    (0.6375, 0.3125, 0.0299),
    (0.5830, -0.0876, -0.0809),
    (0.5037, -0.2942, 0.0558),
)

_EPS = 1e-4


def colour_basis(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Derive a decorrelating colour basis from RGB images in [0, 1], ``(3, H, W)`` each.

    Returns the 3x3 matrix ``M`` (rows RGB) with ``M @ M.T`` proportional to the pixel
    covariance: eigenvectors times square-rooted eigenvalues, largest first, each column's
    sign chosen so its red entry is positive, all divided by the largest column norm.
    """
    pixels = torch.cat([image.reshape(3, -1).double() for image in images], dim=1)
    covariance = torch.cov(pixels)
    values, vectors = torch.linalg.eigh(covariance)
    order = values.argsort(descending=True)
    basis = vectors[:, order] * values[order].clamp_min(0).sqrt()
    basis = basis * torch.where(basis[0] < 0, -1.0, 1.0).to(basis)
    return basis / basis.norm(dim=0).max()


def _basis(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(COLOUR_BASIS, dtype=like.dtype, device=like.device)


def to_rgb(latent: torch.Tensor, decorrelate: bool = True) -> torch.Tensor:
    """Latent ``(B, 3, H, W)`` -> RGB in [0, 1]: colour mixing (optional), then a sigmoid."""
    if decorrelate:
        latent = torch.einsum("ij,bjhw->bihw", _basis(latent), latent)
    return torch.sigmoid(latent)


def from_rgb(rgb: torch.Tensor, decorrelate: bool = True) -> torch.Tensor:
    """Inverse of :func:`to_rgb` (values clamped into (0, 1) first)."""
    latent = torch.logit(rgb.clamp(_EPS, 1 - _EPS))
    if decorrelate:
        inverse = torch.linalg.inv(_basis(latent))
        latent = torch.einsum("ij,bjhw->bihw", inverse, latent)
    return latent


class ImageParam:
    """Base class: a batch of images made from trainable tensors.

    Subclasses set :attr:`tensors` (the leaves the optimiser changes) and implement
    ``__call__() -> (B, 3, H, W)`` in [0, 1]. :attr:`default_lr` is the Adam step that
    works for the parameterisation.
    """

    default_lr: float = 0.05
    tensors: list[torch.Tensor]
    batch: int
    height: int
    width: int

    def parameters(self) -> list[torch.Tensor]:
        return list(self.tensors)

    def __call__(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _noise(shape: Sequence[int], sd: float, generator: torch.Generator,
           device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normal noise drawn on the CPU generator (same images on every device), moved."""
    return (torch.randn(tuple(shape), generator=generator, dtype=torch.float64) * sd).to(
        device=device, dtype=dtype)


class PixelImage(ImageParam):
    """One latent value per pixel and channel (optionally colour-decorrelated)."""

    def __init__(self, batch: int, height: int, width: int, *, generator: torch.Generator,
                 device: torch.device, dtype: torch.dtype = torch.float32,
                 decorrelate: bool = True, sd: float = 0.01,
                 init: torch.Tensor | None = None) -> None:
        self.batch, self.height, self.width = batch, height, width
        self.decorrelate = decorrelate
        if init is not None:
            latent = from_rgb(init.to(device=device, dtype=dtype), decorrelate)
        else:
            latent = _noise((batch, 3, height, width), sd, generator, device, dtype)
        self.latent = latent.detach().clone().requires_grad_(True)
        self.tensors = [self.latent]

    def __call__(self) -> torch.Tensor:
        return to_rgb(self.latent, self.decorrelate)


def spectrum_scale(height: int, width: int, decay_power: float = 1.0,
                   dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                   ) -> torch.Tensor:
    """``1 / max(f, 1/max(H, W)) ** decay_power`` on the ``rfft2`` grid ``(H, W//2 + 1)``."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    freq = (fx.square() + fy.square()).sqrt()
    scale = freq.clamp_min(1.0 / max(height, width)).pow(-decay_power)
    return scale.to(device=device, dtype=dtype)


class FFTImage(ImageParam):
    """A learned spectrum, scaled by ``1/f``, through an inverse real FFT.

    ``latent = irfft2(scale * spectrum, norm="ortho") / 4``; the division by 4 and the
    spectrum's initial standard deviation (0.01) keep the start close to grey and make
    Adam's default step of 0.05 a sensible one (the constants Lucid uses, so learning
    rates carry over).
    """

    def __init__(self, batch: int, height: int, width: int, *, generator: torch.Generator,
                 device: torch.device, dtype: torch.dtype = torch.float32,
                 decorrelate: bool = True, sd: float = 0.01, decay_power: float = 1.0,
                 init: torch.Tensor | None = None) -> None:
        self.batch, self.height, self.width = batch, height, width
        self.decorrelate = decorrelate
        self.scale = spectrum_scale(height, width, decay_power, dtype, device)
        if init is not None:
            latent = from_rgb(init.to(device=device, dtype=dtype), decorrelate) * 4.0
            spectrum = torch.view_as_real(torch.fft.rfft2(latent, norm="ortho") / self.scale)
        else:
            spectrum = _noise((batch, 3, height, width // 2 + 1, 2), sd, generator, device,
                              dtype)
        self.spectrum = spectrum.detach().clone().contiguous().requires_grad_(True)
        self.tensors = [self.spectrum]

    def __call__(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        latent = torch.fft.irfft2(spectrum, s=(self.height, self.width), norm="ortho") / 4.0
        return to_rgb(latent, self.decorrelate)


class CPPNImage(ImageParam):
    """A compositional pattern-producing network per image (Mordvintsev et al. 2018).

    Inputs are the pixel coordinates ``x, y`` in ``[-sqrt(3), sqrt(3)]`` and the radius;
    ``layers`` 1x1 "convolutions" of ``width`` units each, with the composite activation
    ``[atan(h) / 0.67, atan(h)^2 / 0.6]`` (roughly unit variance), then a zero-initialised
    output layer and a sigmoid, so the start is flat grey. Colour is not decorrelated
    (the network mixes colours itself).
    """

    default_lr = 0.005

    def __init__(self, batch: int, height: int, width: int, *, generator: torch.Generator,
                 device: torch.device, dtype: torch.dtype = torch.float32,
                 decorrelate: bool = False, layers: int = 8, channels: int = 24,
                 init: torch.Tensor | None = None) -> None:
        if init is not None:
            raise ObjectiveError("param='cppn' cannot start from an image; use 'fft' or "
                                 "'pixel' with init=")
        self.batch, self.height, self.width = batch, height, width
        r3 = math.sqrt(3.0)
        ys = torch.linspace(-r3, r3, height, dtype=torch.float64)[:, None].expand(height, width)
        xs = torch.linspace(-r3, r3, width, dtype=torch.float64)[None, :].expand(height, width)
        coords = torch.stack([xs, ys, (xs.square() + ys.square()).sqrt()])
        self.coords = coords.to(device=device, dtype=dtype)
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        fan_in = 3
        for _ in range(layers):
            weight = _noise((batch, channels, fan_in), math.sqrt(1.0 / fan_in), generator,
                            device, dtype)
            self.weights.append(weight.requires_grad_(True))
            self.biases.append(torch.zeros(batch, channels, 1, 1, device=device, dtype=dtype,
                                           requires_grad=True))
            fan_in = 2 * channels
        self.weights.append(torch.zeros(batch, 3, fan_in, device=device, dtype=dtype,
                                        requires_grad=True))
        self.biases.append(torch.zeros(batch, 3, 1, 1, device=device, dtype=dtype,
                                       requires_grad=True))
        self.tensors = self.weights + self.biases

    def __call__(self) -> torch.Tensor:
        h = self.coords.expand(self.batch, -1, -1, -1)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            h = torch.einsum("boi,bihw->bohw", weight, h) + bias
            if i < last:
                a = torch.atan(h)
                h = torch.cat([a / 0.67, a.square() / 0.6], dim=1)
        return torch.sigmoid(h)


PARAMS: dict[str, type[ImageParam]] = {"fft": FFTImage, "pixel": PixelImage,
                                        "cppn": CPPNImage}


def make_param(param: str | ImageParam, batch: int, size: tuple[int, int], *,
               generator: torch.Generator, device: torch.device,
               dtype: torch.dtype = torch.float32, decorrelate: bool = True,
               init: torch.Tensor | None = None) -> ImageParam:
    """Build the parameterisation named ``param`` (or check a ready one).

    Args:
        param: ``"fft"``, ``"pixel"``, ``"cppn"`` or an :class:`ImageParam` instance.
        batch: Number of images.
        size: ``(height, width)``.
        generator: Source of the initial noise (CPU generator).
        device, dtype: Where and in what precision the images live (the model's).
        decorrelate: Optimise in the decorrelated colour space (fft and pixel).
        init: Optional ``(batch, 3, H, W)`` start images in [0, 1] (DeepDream).
    """
    if isinstance(param, ImageParam):
        if param.batch != batch:
            raise ObjectiveError(f"the given parameterisation makes {param.batch} images but "
                                 f"{batch} objectives/images were asked for")
        return param
    if param not in PARAMS:
        raise ObjectiveError(unknown_choice("parameterisation", param, PARAMS))
    height, width = size
    kwargs = {"decorrelate": decorrelate} if param != "cppn" else {}
    return PARAMS[param](batch, height, width, generator=generator, device=device, dtype=dtype,
                         init=init, **kwargs)
