"""Audit folders opened for browsing: ``OUT/audit.json`` read once, images served by index.

The client names an audit by its position in the server's ``--audit`` list and an image by
its position in that audit's ``images`` list: opaque integers, never a path, so a request
cannot make the server read a file the audit did not list.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from convlens.errors import ConvlensError

THUMBNAIL_SIZE = 160
MAX_PAGE = 200
_REQUIRED = ("images", "classes", "suspicious")


class AuditError(ConvlensError, ValueError):
    """An audit folder is missing its ``audit.json`` or the file does not follow the schema."""


@dataclass
class AuditFolder:
    """One audit folder: its ``audit.json`` and the image files it lists.

    Attributes:
        folder: The folder given with ``--audit``.
        data: The parsed ``audit.json``.
    """

    folder: Path
    data: dict[str, Any]
    _by_class: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, folder: str | Path) -> AuditFolder:
        """Read ``folder/audit.json`` (a clear AuditError when missing or malformed)."""
        folder = Path(folder)
        path = folder / "audit.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AuditError(f"{folder}: no audit.json here; give a folder written by "
                             "`convlens audit --out DIR`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise AuditError(f"{path}: cannot read it as JSON ({error}); rerun the audit") from None
        if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in _REQUIRED):
            raise AuditError(f"{path}: expected an object with lists {', '.join(_REQUIRED)}; "
                             "rerun `convlens audit` with this version of convlens")
        audit = cls(folder, data)
        for index, image in enumerate(data["images"]):
            audit._by_class.setdefault(str(image.get("label")), []).append(index)
        return audit

    def summary(self) -> dict[str, Any]:
        """Model, method and the classes with their clusters, suspicious clusters first."""
        data = self.data
        classes = []
        for entry in data["classes"]:
            clusters = [{k: c.get(k) for k in ("id", "size", "error_rate", "suspicion",
                                               "flip_rate")} for c in entry.get("clusters", [])]
            clusters.sort(key=lambda c: -(c.get("suspicion") or 0.0))
            classes.append({k: entry.get(k) for k in ("name", "support", "precision", "recall")}
                           | {"clusters": clusters})
        suspicious = sorted(data["suspicious"], key=lambda s: -(s.get("suspicion") or 0.0))
        mistakes = sum(1 for image in data["images"] if not image.get("correct", True))
        return {"name": self.folder.name, "model": data.get("model"),
                "method": data.get("method"), "layer": data.get("layer"),
                "group_by": data.get("group_by"), "images": len(data["images"]),
                "mistakes": mistakes, "errors": len(data.get("errors", [])),
                "suspicious": suspicious, "classes": classes}

    def page(self, *, label: str | None = None, cluster: int | None = None,
             mistakes: bool = False, offset: int = 0, limit: int = 60) -> dict[str, Any]:
        """One page of the images matching the filters, with their opaque indices."""
        offset = max(0, int(offset))
        limit = max(1, min(int(limit), MAX_PAGE))
        images = self.data["images"]
        indices = self._by_class.get(label, []) if label is not None else range(len(images))
        chosen = [i for i in indices
                  if (cluster is None or images[i].get("cluster") == cluster)
                  and (not mistakes or not images[i].get("correct", True))]
        rows = [{"index": i, "name": Path(str(images[i].get("path", ""))).name}
                | {k: images[i].get(k) for k in ("label", "predicted", "probability",
                                                 "correct", "cluster")}
                for i in chosen[offset:offset + limit]]
        return {"total": len(chosen), "offset": offset, "limit": limit, "items": rows}

    def image_path(self, index: int) -> Path:
        """The file of image ``index``: a relative path is taken under the audit's data root
        (its ``"data"`` entry), then under the audit folder, then as it stands."""
        images = self.data["images"]
        if not 0 <= index < len(images):
            raise AuditError(f"no image {index} in this audit; it has {len(images)}")
        path = Path(str(images[index].get("path", "")))
        if path.is_absolute():
            return path
        roots = [Path(str(self.data["data"]))] if isinstance(self.data.get("data"), str) else []
        for root in [*roots, self.folder]:
            if (root / path).exists():
                return root / path
        return path

    def thumbnail(self, index: int) -> bytes:
        """A JPEG thumbnail (longer side :data:`THUMBNAIL_SIZE`) of image ``index``."""
        return _thumbnail(str(self.image_path(index)))


@lru_cache(maxsize=2048)
def _thumbnail(path: str) -> bytes:
    from convlens.io.images import load_image

    image = load_image(path)
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
