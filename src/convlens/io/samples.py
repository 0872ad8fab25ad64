"""Sample photos for demos and smoke tests, taken from scikit-image's bundled data.

Every sample ships inside the scikit-image wheel, so loading them needs no network (the
images that scikit-image downloads on demand through pooch are deliberately not used).
They were chosen because ImageNet classifiers recognise them, which makes explanations of
them meaningful:

* ``chelsea`` - a tabby cat (ImageNet: tabby, tiger cat, Egyptian cat);
* ``coffee`` - a cup of espresso (ImageNet: espresso, cup);
* ``rocket`` - a Falcon 9 rocket at lift-off (ImageNet: missile, projectile);
* ``motorcycle`` - a motorcycle in a lab (ImageNet: moped, motor scooter), the left view
  of scikit-image's stereo pair.

``astronaut`` is bundled too but left out: ImageNet has no "person" class, so a classifier
has nothing sensible to say about it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from convlens.errors import ImageError
from convlens.files import ensure_folder, save_image_atomic
from convlens.io.images import load_image

__all__ = ["SAMPLE_NAMES", "sample_images", "sample_paths"]

SAMPLE_NAMES: tuple[str, ...] = ("chelsea", "coffee", "rocket", "motorcycle")
"""Names of the bundled samples, in the order :func:`sample_images` returns them."""


def _loaders() -> dict[str, Callable[[], np.ndarray]]:
    """The scikit-image functions behind each sample (imported lazily: skimage is slow)."""
    from skimage import data

    return {
        "chelsea": data.chelsea,
        "coffee": data.coffee,
        "rocket": data.rocket,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
    }


def sample_images() -> dict[str, Image.Image]:
    """Load the bundled sample photos, without network access.

    Returns:
        New RGB images keyed by short name (see :data:`SAMPLE_NAMES`), always including
        ``"chelsea"`` and ``"coffee"``. Each call returns fresh images that the caller may
        modify.

    Raises:
        ImageError: scikit-image's data files are missing from this installation.
    """
    loaders = _loaders()
    return {name: _load_sample(name, loaders[name]) for name in SAMPLE_NAMES}


def _load_sample(name: str, loader: Callable[[], np.ndarray]) -> Image.Image:
    """Run one scikit-image loader and normalise its array to an RGB image."""
    try:
        array = loader()
    except (OSError, ImportError, KeyError, ValueError) as error:
        raise ImageError(
            None,
            f"bundled sample {name!r} could not be read from "
            f"scikit-image's data ({error}); reinstall scikit-image",
        ) from None
    return load_image(array)


def sample_paths(directory: Path) -> list[Path]:
    """Write the sample photos as PNG files, for demos that take file paths.

    Args:
        directory: Where to write them; created (with parents) if missing. Existing files
            with the same names are overwritten.

    Returns:
        The written files, ``<directory>/<name>.png``, in :data:`SAMPLE_NAMES` order.

    Raises:
        ImageError: The sample data could not be read.
        OSError: The directory or a file could not be written.
    """
    directory = ensure_folder(directory)
    return [save_image_atomic(image, directory / f"{name}.png", format="PNG")
            for name, image in sample_images().items()]
