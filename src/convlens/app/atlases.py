"""Concept atlas folders opened for browsing: channels listed, patches cut on demand.

A folder written by ``convlens concepts atlas`` (``references.json`` + ``references.npz``) is
opened with the server's model, which must be the one that computed it (the model
fingerprint is checked when the server starts: one clear error line, not wrong patches on
some later request). The client names a folder, a channel, a mode and a rank by integers;
the image file is the one ``references.json`` lists, confined to the data folder it records
(or the atlas folder) as audit images are (:mod:`convlens.app.audits`): a crafted
``references.json`` cannot make the server read another file. A patch is recomputed when
asked for (one forward and one backward of the model, :mod:`convlens.concepts.patches`) and
kept in a small cache.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from convlens.app.audits import _roots
from convlens.concepts.patches import crop_patch, patch_box
from convlens.concepts.references import MODES, ReferenceSets
from convlens.errors import AtlasNotFound
from convlens.models.classifier import Classifier

PATCH_SIDE = 128
MAX_CHANNELS = 512
CACHE = 512


@dataclass
class AtlasFolder:
    """One reference-set folder and the patches drawn from it so far."""

    folder: Path
    sets: ReferenceSets
    _roots: list[Path] = field(default_factory=list, repr=False)
    _patches: OrderedDict[tuple[int, str, int], bytes] = field(default_factory=OrderedDict,
                                                               repr=False)

    @classmethod
    def open(cls, folder: str | Path, classifier: Classifier) -> AtlasFolder:
        """Read the reference set with ``classifier`` (ReferenceSetError when it is missing
        or was computed by another model)."""
        sets = ReferenceSets.load_folder(folder, classifier)
        atlas = cls(Path(folder), sets)
        atlas._roots = _roots(Path(folder), sets.meta.get("root"))
        return atlas

    def summary(self, limit: int = MAX_CHANNELS) -> dict[str, Any]:
        """Model, layer, k and the channels, most relevant over the data first."""
        sets = self.sets
        ranked = sets.ranked_channels()[:max(1, min(int(limit), MAX_CHANNELS))]
        return {"name": self.folder.name, "model": sets.meta.get("model"), "layer": sets.layer,
                "k": sets.k, "rule": sets.rule, "images": sets.meta.get("count"),
                "errors": len(sets.meta.get("errors", [])), "channels": sets.channels,
                "ranked": [{"channel": c, "total": float(sets.relevance_total[c])}
                           for c in ranked]}

    def channel(self, channel: int) -> dict[str, Any]:
        """A channel's reference images per mode: rank, score, file name."""
        self._check_channel(channel)
        result: dict[str, Any] = {"channel": channel,
                                  "total": float(self.sets.relevance_total[channel])}
        for mode in MODES:
            result[mode] = [{"rank": rank, "score": score,
                             "name": PurePath(self.sets.images[image]["path"]).name}
                            for rank, (image, score, _p) in
                            enumerate(self.sets.entries(channel, mode))]
        return result

    def patch(self, channel: int, mode: str, rank: int) -> bytes:
        """The PNG of ``channel``'s ``rank``-th ``mode`` patch, cut from the photo."""
        key = (channel, mode, rank)
        if key in self._patches:
            self._patches.move_to_end(key)
            return self._patches[key]
        self._check_channel(channel)
        if mode not in MODES:
            raise AtlasNotFound(f"no mode {mode!r}; modes: {', '.join(MODES)}")
        entries = list(self.sets.entries(channel, mode))
        if not 0 <= rank < len(entries):
            raise AtlasNotFound(f"no rank {rank} for channel {channel}; it has {len(entries)}")
        image, _score, position = entries[rank]
        picture = self._cut(image, channel, position, mode)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        self._patches[key] = buffer.getvalue()
        while len(self._patches) > CACHE:
            self._patches.popitem(last=False)
        return self._patches[key]

    def _cut(self, image: int, channel: int, position: tuple[int, int], mode: str) -> Any:
        sets = self.sets
        classifier = sets.classifier
        path = self._image_path(image)
        tensor, geometry, photo = classifier.preprocessing.load_file(path, keep_photo=True)
        box = patch_box(classifier, tensor[None].to(classifier.device), sets.layer, channel,
                        position, mode, rule=sets.meta.get("rule_option", "auto"))
        crop = crop_patch(photo, geometry, box, classifier.preprocessing.input_size)
        crop.thumbnail((PATCH_SIDE, PATCH_SIDE))
        return crop.convert("RGB")

    def _check_channel(self, channel: int) -> None:
        if not 0 <= channel < self.sets.channels:
            raise AtlasNotFound(f"no channel {channel}: layer {self.sets.layer!r} has "
                                f"{self.sets.channels} (0..{self.sets.channels - 1})")

    def _image_path(self, image: int) -> Path:
        record = self.sets.images[image]
        relative = PurePath(str(record.get("path", "")))
        if not relative.is_absolute() and relative.parts:
            for root in self._roots:
                candidate = (root / relative).resolve()
                if candidate.is_relative_to(root) and candidate.is_file():
                    return candidate
        raise AtlasNotFound(f"no image {image}: its file is not inside the atlas's data folder "
                            "or the atlas folder")
