"""What to do with the data, as a CSV: the images to relabel, remove or augment.

From the audit: the strategy's members, mistakes first (their labelled class is what the
model should have said; augmenting them without the artefact, or relabelling a wrong label,
is the fix at the data), then the correct predictions that carry the same evidence (the
artefact co-occurs with their class: augment them too, or remove the artefact). From a
training folder, when given: its images that lie furthest along the strategy's direction
(``(a - z) . v / |v|^2``: 1 means as far as the strategy's members on average), the ones most
likely to carry the artefact, so that the training data can be checked where it taught the
shortcut.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import torch

from convlens.correction.direction import layer_activations
from convlens.files import write_text_atomic
from convlens.io.datasets import read_dataset
from convlens.models.classifier import Classifier

FIELDS = ("path", "source", "label", "predicted", "action", "score")


def audit_rows(data: dict[str, Any], strategy: dict[str, Any]) -> list[dict[str, Any]]:
    """The strategy's members as guidance rows, mistakes first."""
    members = set(strategy.get("members") or [])
    rows = []
    for image in data["images"]:
        if image.get("path") not in members:
            continue
        wrong = image.get("label") is not None and not image.get("correct", True)
        action = ("relabel if the label is wrong, else augment without the artefact "
                  "(a mistake the strategy explains)" if wrong else
                  "augment or remove the artefact (a correct prediction resting on the same "
                  "evidence)")
        rows.append({"path": image["path"], "source": "audit", "label": image.get("label"),
                     "predicted": image.get("predicted"), "action": action, "score": ""})
    rows.sort(key=lambda r: (r["action"].startswith("augment"), r["path"]))
    return rows


def training_rows(classifier: Classifier, direction: Any, train: str | os.PathLike[str], *,
                  top: int = 50, batch_size: int = 64, shape: str = "map"
                  ) -> list[dict[str, Any]]:
    """The ``top`` training images furthest along the direction (see the module doc)."""
    dataset = read_dataset(train)
    entries = list(dataset.entries)
    scores: list[float] = []
    for start in range(0, len(entries), batch_size):
        chunk = entries[start:start + batch_size]
        x = classifier.preprocess([str(e.path) for e in chunk])
        scores.extend(direction.position(layer_activations(
            classifier, x, direction.layer, batch_size=batch_size, shape=shape)).tolist())
    order = torch.tensor(scores).argsort(descending=True)[:top].tolist()
    return [{"path": str(entries[i].path), "source": "training", "label": entries[i].label,
             "predicted": "", "action": "check for the artefact: this training image lies "
             "along the strategy's direction", "score": round(scores[i], 4)} for i in order]


def write_guidance(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as a CSV (atomically)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in FIELDS})
    return write_text_atomic(path, buffer.getvalue())
