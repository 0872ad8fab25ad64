"""Writing a corrected model as a folder: ``FIXED/card.json``, ``FIXED/projection.safetensors``
(the direction) and, for the training methods, ``FIXED/weights.safetensors`` (the tensors they
changed); what the card holds and how it is read back: ``models/corrected.py``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from convlens import __version__
from convlens.files import atomic_output, write_json_atomic
from convlens.models.corrected import CARD, FORMAT, PROJECTION, WEIGHTS, sha256_of

_PREPROCESSING = ("input_size", "resize", "resize_size", "mean", "std", "interpolation")


def model_source(model: str, *, weights: str | os.PathLike[str] | None = None,
                 trust_model: bool = False) -> dict[str, Any]:
    """The original model's source as the card records it (paths made absolute, weights
    fingerprinted)."""
    source: dict[str, Any] = {"model": model, "trust_model": bool(trust_model)}
    candidate = Path(model.rsplit(":", 1)[0]) if ":" in model else Path(model)
    if candidate.exists():  # a file or a factory file: absolute, so the folder can move
        source["model"] = str(candidate.resolve()) + (":" + model.rsplit(":", 1)[1]
                                                      if ":" in model else "")
    if weights is not None:
        path = Path(os.fspath(weights)).resolve()
        source["weights"], source["weights_sha256"] = str(path), sha256_of(path)
    return source


def save_correction(correction: Any, out: str | os.PathLike[str], *, source: dict[str, Any],
                    audit: str | os.PathLike[str] | None = None) -> Path:
    """Write ``correction`` (a :class:`~convlens.correction.run.Correction`) into ``out``."""
    from safetensors.torch import save_file

    folder = Path(os.fspath(out))
    folder.mkdir(parents=True, exist_ok=True)
    classifier = correction.classifier
    preprocessing = {name: getattr(classifier.preprocessing, name, None)
                     for name in _PREPROCESSING}
    preprocessing = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocessing.items()}
    with atomic_output(folder / PROJECTION) as path:
        save_file({"direction": correction.direction.vector.detach().float().cpu().contiguous(),
                   "reference": correction.direction.reference.detach().float().cpu()
                   .contiguous()}, str(path))
    weights = None
    if correction.changed:
        with atomic_output(folder / WEIGHTS) as path:
            save_file({k: v.detach().cpu().contiguous() for k, v in correction.changed.items()},
                      str(path))
        weights = {"file": WEIGHTS, "keys": sorted(correction.changed),
                   "sha256": sha256_of(folder / WEIGHTS)}
    card = {
        "format": FORMAT, "convlens": __version__, "method": correction.method,
        "strategy": correction.strategy,
        "audit": str(Path(os.fspath(audit)).resolve()) if audit is not None else None,
        "layer": correction.direction.layer, "shape": correction.shape,
        "pooled": correction.shape == "channel", "projected": bool(correction.projection),
        "weights": weights, "seed": correction.settings.get("seed"),
        "training": None if correction.data is None else {
            "data": correction.data, "settings": correction.settings,
            "history": correction.history, "notes": correction.notes},
        "direction_classes": {k: {"members": m, "others": o}
                              for k, (m, o) in correction.direction.classes.items()},
        "images": correction.images, "source": source, "labels": classifier.labels,
        "preprocessing": preprocessing, "output": classifier.output,
    }
    write_json_atomic(folder / CARD, card)
    return folder
