"""The photos a server keeps between requests: bounded copies held as PNG bytes, not pixels.

An upload is decoded once (the CLI's safe loader, pixel cap from the header), shrunk to a
working copy whose longer side is at most :data:`WORKING_SIDE` and kept as PNG bytes under
an opaque id. Every later use (the photo itself, an explanation) decodes those bytes again:
a 62 KB PNG of 8000 x 8000 pixels would cost ~190 MB decoded, its working copy ~3 MB
decoded and less as PNG. The store is bounded twice, by count and by total bytes; the
oldest photos are evicted first (docs/architecture.md, "convlens serve under load").
"""

from __future__ import annotations

import io
import secrets
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from convlens.app.work import give_back_memory
from convlens.errors import ImageError
from convlens.files import write_bytes_atomic
from convlens.io.images import load_image

WORKING_SIDE = 1024
MAX_STORED_IMAGES = 64
MAX_STORED_BYTES = 128 * 1024 * 1024
_DECODES = threading.BoundedSemaphore(2)  # full-size decodes at once, per process


@dataclass(frozen=True)
class StoredPhoto:
    """One kept photo: its name, the working copy as PNG bytes and the sizes."""

    name: str
    png: bytes
    size: tuple[int, int]
    original_size: tuple[int, int]

    def image(self) -> Image.Image:
        """The working copy, decoded (RGB)."""
        with Image.open(io.BytesIO(self.png)) as image:
            return image.convert("RGB")


def working_copy(image: Image.Image) -> Image.Image:
    """``image`` shrunk so that its longer side is at most :data:`WORKING_SIDE` (aspect
    kept; smaller photos are returned as they are)."""
    if max(image.size) <= WORKING_SIDE:
        return image
    copy = image.copy()
    copy.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return copy


def decode_upload(name: str, data: bytes, max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """Decode uploaded bytes with the CLI's loader; return the working copy and the
    original ``(width, height)``. At most two full-size decodes run at once, so that many
    large uploads arriving together cannot multiply the peak."""
    if not data:
        raise ImageError(name, "the upload is empty; choose a photo file")
    with _DECODES, tempfile.TemporaryDirectory(prefix="convlens-upload-") as folder:
        path = Path(folder) / "upload"
        write_bytes_atomic(path, data)
        try:
            image = load_image(path, max_pixels=max_pixels)
        except ImageError as error:
            raise ImageError(name, error.reason) from None
        original = image.size
        copy = working_copy(image)
        del image
    give_back_memory()
    return copy, original


class PhotoStore:
    """Photos by opaque id, oldest evicted first past ``max_count`` photos or
    ``max_bytes`` of PNG in all. Thread-safe; never holds the model's lock."""

    def __init__(self, max_count: int = MAX_STORED_IMAGES,
                 max_bytes: int = MAX_STORED_BYTES) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._photos: OrderedDict[str, StoredPhoto] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, name: str, image: Image.Image, original_size: tuple[int, int]) -> str:
        """Keep ``image`` (already a working copy) as PNG bytes; return its id."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        photo = StoredPhoto(name, buffer.getvalue(), image.size, tuple(original_size))
        if len(photo.png) > self.max_bytes:
            raise ImageError(name, f"its working copy takes {len(photo.png):,} bytes, more than "
                                   f"this server keeps ({self.max_bytes:,}); send a smaller photo")
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._photos[token] = photo
            self._bytes += len(photo.png)
            while len(self._photos) > self.max_count or self._bytes > self.max_bytes:
                _token, old = self._photos.popitem(last=False)
                self._bytes -= len(old.png)
        return token

    def get(self, token: object) -> StoredPhoto:
        """The photo under ``token`` (an ImageError saying what to do when it is gone)."""
        with self._lock:
            found = self._photos.get(token) if isinstance(token, str) else None
        if found is None:
            raise ImageError(None, f"unknown image id (the server keeps the last "
                                   f"{self.max_count} photos, {self.max_bytes // 2**20} MiB in "
                                   "all); upload the photo again")
        return found

    @property
    def total_bytes(self) -> int:
        """PNG bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._photos)
