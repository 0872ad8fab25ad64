"""Image input for convlens: safe decoding, batch input expansion and sample photos."""

from convlens.io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageSource,
    InputProblem,
    expand_inputs,
    is_image_file,
    load_image,
    safe_output_name,
)
from convlens.io.samples import SAMPLE_NAMES, sample_images, sample_paths

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "SAMPLE_NAMES",
    "ImageSource",
    "InputProblem",
    "expand_inputs",
    "is_image_file",
    "load_image",
    "safe_output_name",
    "sample_images",
    "sample_paths",
]
