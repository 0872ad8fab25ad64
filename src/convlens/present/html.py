"""Self-contained HTML pages (Jinja2, autoescaped): images are embedded as data URIs."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image


def data_uri(image: Image.Image | Path, max_side: int | None = None) -> str:
    """A JPEG data URI for an image or an image file, optionally shrunk to ``max_side``.

    JPEG (quality 88) keeps the self-contained demo page a few MB instead of tens.
    """
    if isinstance(image, Path):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    if max_side and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_page(template: str, context: dict[str, Any]) -> str:
    """Render a packaged template with autoescaping on."""
    environment = Environment(
        loader=PackageLoader("convlens", "present/templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    return environment.get_template(template).render(**context)
