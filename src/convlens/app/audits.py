"""Audit folders opened for browsing: ``OUT/audit.json`` read once, images served by index.

The client names an audit by its position in the server's ``--audit`` list and an image by
its position in that audit's ``images`` list: opaque integers, never a path, so a request
cannot make the server read a file the audit did not list. The audit.json itself is not
trusted either: its schema is checked when the folder is opened (one AuditError line, not
a failure on some later request), and every image path it lists is confined to the
audit's data folder (or the audit folder): absolute paths, ``..`` and symlinks leading
out are refused with 404, so a crafted audit.json cannot make the server read another file.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

from convlens.errors import AuditError, AuditNotFound
from convlens.io.images import load_image

THUMBNAIL_SIZE = 160
MAX_PAGE = 200
_REQUIRED = ("images", "classes", "suspicious")


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
    _roots: list[Path] = field(default_factory=list, repr=False)

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
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
            raise AuditError(f"{path}: cannot read it as JSON ({error}); rerun the audit") from None
        problem = _schema_problem(data)
        if problem:
            raise AuditError(f"{path}: {problem}; rerun `convlens audit` with this version of "
                             "convlens")
        audit = cls(folder, data)
        audit._roots = _roots(folder, data.get("data"))
        for index, image in enumerate(data["images"]):
            audit._by_class.setdefault(str(image.get("label")), []).append(index)
        return audit

    def summary(self) -> dict[str, Any]:
        """Model, method, the strategies (most suspicious first, without their member lists)
        and the classes with their clusters, suspicious clusters first."""
        data = self.data
        classes = []
        for entry in data["classes"]:
            clusters = [{k: c.get(k) for k in ("id", "size", "error_rate", "suspicion",
                                               "flip_rate")} for c in entry.get("clusters", [])]
            clusters.sort(key=lambda c: -(c.get("suspicion") or 0.0))
            classes.append({k: entry.get(k) for k in ("name", "support", "precision", "recall")}
                           | {"clusters": clusters})
        suspicious = sorted(data["suspicious"], key=lambda s: -(s.get("suspicion") or 0.0))
        strategies = [{k: s.get(k) for k in ("id", "kind", "groups", "size", "error_rate",
                                             "suspicion", "why", "causal", "concept_words")}
                      | {"concepts": [{k: c.get(k) for k in ("channel", "layer", "score",
                                                            "member_share", "rest_share")}
                                      for c in s.get("concepts") or [] if isinstance(c, dict)]}
                      for s in data.get("strategies") or [] if isinstance(s, dict)]
        mistakes = sum(1 for image in data["images"] if not image.get("correct", True))
        return {"name": self.folder.name, "model": data.get("model"),
                "method": data.get("method"), "layer": data.get("layer"),
                "group_by": data.get("group_by"), "images": len(data["images"]),
                "mistakes": mistakes, "errors": len(data.get("errors", [])),
                "strategies": strategies, "suspicious": suspicious, "classes": classes}

    def page(self, *, label: str | None = None, cluster: int | None = None,
             mistakes: bool = False, offset: int = 0, limit: int = 60,
             strategy: int | None = None, concept: int | None = None) -> dict[str, Any]:
        """One page of the images matching the filters, with their opaque indices
        (``strategy``: the members of that strategy, by its id; with ``concept``, a channel
        the strategy rests on: that concept's reference images, most relevant first)."""
        offset = max(0, int(offset))
        limit = max(1, min(int(limit), MAX_PAGE))
        images = self.data["images"]
        indices = self._by_class.get(label, []) if label is not None else range(len(images))
        if concept is not None:
            if strategy is None:
                raise AuditNotFound("concept= needs strategy=: a concept is one of a "
                                    "strategy's channels")
            order = self._concept_references(strategy, concept)
            indices = sorted((i for i in indices if images[i].get("path") in order),
                             key=lambda i: order[images[i].get("path")])
            strategy = None
        members = self._strategy_members(strategy) if strategy is not None else None
        chosen = [i for i in indices
                  if (cluster is None or images[i].get("cluster") == cluster)
                  and (members is None or images[i].get("path") in members)
                  and (not mistakes or not images[i].get("correct", True))]
        rows = [{"index": i, "name": Path(str(images[i].get("path", ""))).name}
                | {k: images[i].get(k) for k in ("label", "predicted", "probability",
                                                 "correct", "cluster")}
                for i in chosen[offset:offset + limit]]
        return {"total": len(chosen), "offset": offset, "limit": limit, "items": rows}

    def _concept_references(self, strategy: int, channel: int) -> dict[str, int]:
        """Reference image path -> rank, of concept ``channel`` of strategy ``strategy``."""
        for entry in self.data.get("strategies") or []:
            if isinstance(entry, dict) and entry.get("id") == strategy:
                for concept in entry.get("concepts") or []:
                    if isinstance(concept, dict) and concept.get("channel") == channel:
                        return {str(r.get("path")): rank for rank, r in
                                enumerate(concept.get("references") or [])}
                channels = [str(c.get("channel")) for c in entry.get("concepts") or []]
                raise AuditNotFound(f"strategy {strategy} has no concept {channel}; its "
                                    f"concepts: {', '.join(channels) or 'none (audit with '}"
                                    + ("" if channels else "--concepts)"))
        self._strategy_members(strategy)  # raises: no such strategy
        return {}

    def _strategy_members(self, strategy: int) -> set[str]:
        for entry in self.data.get("strategies") or []:
            if isinstance(entry, dict) and entry.get("id") == strategy:
                return {str(m) for m in entry.get("members") or []}
        raise AuditNotFound(f"no strategy {strategy} in this audit; it has "
                            f"{len(self.data.get('strategies') or [])}")

    def image_path(self, index: int) -> Path:
        """The file of image ``index``: its relative path taken under the audit's data
        folder (its ``"data"`` entry), then under the audit folder; the resolved file must
        lie inside that folder (no absolute path, no ``..``, no symlink leading out)."""
        images = self.data["images"]
        if not 0 <= index < len(images):
            raise AuditNotFound(f"no image {index} in this audit; it has {len(images)}")
        relative = PurePath(images[index]["path"])
        if not relative.is_absolute() and relative.parts:
            for root in self._roots:
                candidate = (root / relative).resolve()
                if candidate.is_relative_to(root) and candidate.is_file():
                    return candidate
        raise AuditNotFound(f"no image {index}: its file is not inside the audit's data "
                            "folder or the audit folder (paths in audit.json are relative to "
                            "them)")

    def thumbnail(self, index: int) -> bytes:
        """A JPEG thumbnail (longer side :data:`THUMBNAIL_SIZE`) of image ``index``."""
        return _thumbnail(str(self.image_path(index)))


def _roots(folder: Path, data: Any) -> list[Path]:
    """The folders image paths may lie in, resolved: the data folder the audit read (not a
    filesystem root: that would confine nothing) and the audit folder."""
    roots = []
    if isinstance(data, str) and data:
        root = Path(data).resolve()
        if root.parent != root and root.is_dir():
            roots.append(root)
    roots.append(folder.resolve())
    return roots


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _schema_problem(data: Any) -> str | None:
    """What is wrong with a parsed audit.json, in words, or ``None``: the fields the server
    reads, with the types it reads them as."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    for key in _REQUIRED:
        entries = data.get(key)
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            return f"expected {key!r} to be a list of objects"
    if not isinstance(data.get("errors", []), list):
        return "expected 'errors' to be a list"
    for i, image in enumerate(data["images"]):
        if not isinstance(image.get("path"), str):
            return f"images[{i}].path must be a string, got {image.get('path')!r}"
        if not _number(image.get("probability")) or not _number(image.get("cluster")):
            return f"images[{i}]: probability and cluster must be numbers"
    for i, entry in enumerate(data["classes"]):
        clusters = entry.get("clusters", [])
        if not isinstance(clusters, list) or not all(isinstance(c, dict) for c in clusters):
            return f"classes[{i}].clusters must be a list of objects"
        if not all(_number(c.get(k)) for c in clusters
                   for k in ("size", "error_rate", "suspicion", "flip_rate")):
            return f"classes[{i}].clusters: size, error_rate, suspicion, flip_rate must be numbers"
    if not all(_number(s.get("suspicion")) for s in data["suspicious"]):
        return "suspicious[].suspicion must be numbers"
    return None


@lru_cache(maxsize=2048)
def _thumbnail(path: str) -> bytes:
    image = load_image(path)
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
