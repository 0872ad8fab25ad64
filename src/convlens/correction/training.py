"""What the training corrections (``rrclarc``, ``last-layer``) share: their data, the part of
the network they may change, and a checkpoint that lets a killed correction resume.

* :func:`training_set`: the images to train on, with class indices: a labelled folder
  (``--data``: ImageFolder or CSV, as ``convlens audit`` reads it) or, by default, the audit's
  own labelled images. Decoded once and kept in memory when small (:data:`CACHE_BYTES`).
* :func:`modules_above`: the leaf modules whose input depends on a layer's output, found by
  one probe pass in which only that output requires a gradient. A correction changes only
  those (Reveal-to-Revise's RR-ClArC trains only the linear layers above its layer, and
  keeps BatchNorm frozen; so do we: the corrected network runs in eval mode throughout).
* :class:`Checkpoint`: the trained tensors, the optimiser's state, the generator's state and
  the history after every epoch, under a key of everything that determines the result; a
  second run with the same key continues where the first stopped, with another key it starts
  again and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens._hooks import HookSession
from convlens.errors import CorrectionError
from convlens.files import atomic_output
from convlens.io.datasets import read_dataset
from convlens.models.classifier import Classifier

AUDIT_IMAGES = "the audit's labelled images"
"""The training data's source (card and page) when no ``--data`` is given."""
CACHE_BYTES = 1 << 30
"""Training images are kept decoded in memory up to this size, else decoded per batch."""


@dataclass
class TrainingSet:
    """Images to train a correction on.

    Attributes:
        files: Absolute image paths.
        targets: ``(N,)`` class indices into the classifier's labels.
        source: Where they came from, for the card (a folder, or "the audit's images").
        flagged: ``(N,)`` bool: an image of the strategy (the audit's members) or, for other
            data, one that lies along the strategy's direction (set by the method).
    """

    files: list[str]
    targets: torch.Tensor
    source: str
    flagged: torch.Tensor
    _cache: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.files)

    def images(self, classifier: Classifier, indices: Sequence[int]) -> torch.Tensor:
        """Preprocessed images ``indices`` (CPU), decoded once when the set is small."""
        if self._cache is None and len(self.files):
            probe = classifier.preprocess([self.files[0]]).cpu()
            if probe.numel() * probe.element_size() * len(self.files) <= CACHE_BYTES:
                self._cache = torch.cat([classifier.preprocess(self.files[s:s + 64]).cpu()
                                         for s in range(0, len(self.files), 64)])
        if self._cache is not None:
            return self._cache[torch.as_tensor(list(indices), dtype=torch.long)]
        return classifier.preprocess([self.files[i] for i in indices]).cpu()

    def batches(self, classifier: Classifier, order: Sequence[int], batch_size: int
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(x, targets, flagged)`` in ``order``, ``batch_size`` at a time."""
        for start in range(0, len(order), batch_size):
            part = list(order[start:start + batch_size])
            index = torch.as_tensor(part, dtype=torch.long)
            yield self.images(classifier, part), self.targets[index], self.flagged[index]


def training_set(classifier: Classifier, data: str | os.PathLike[str] | None,
                 audit_images: Sequence[dict[str, Any]], members: set[str]) -> TrainingSet:
    """The images a training correction learns from (see the module doc).

    Raises:
        CorrectionError: labels the model does not know (named), or no image.
    """
    labels = list(classifier.labels or [])
    if data is None:
        files = [r["file"] for r in audit_images]
        names = [str(r["label"]) for r in audit_images]
        flagged = [r["path"] in members for r in audit_images]
        source = AUDIT_IMAGES
    else:
        dataset = read_dataset(data)
        entries = [e for e in dataset.entries if e.label is not None]
        if not entries:
            raise CorrectionError(f"--data {data} has no labelled images; give an ImageFolder "
                                  "(one folder per class) or a CSV with a label column")
        files = [str(e.path) for e in entries]
        names = [str(e.label) for e in entries]
        flagged = [False] * len(entries)
        source = str(Path(os.fspath(data)).resolve())
    unknown = sorted({n for n in names if n not in labels})
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise CorrectionError(f"the training labels {shown} are not among the model's "
                              f"{len(labels)} labels; give --labels or data labelled with the "
                              "model's class names")
    if not files:
        raise CorrectionError("no labelled image to train the correction on")
    return TrainingSet(files, torch.tensor([labels.index(n) for n in names]), source,
                       torch.tensor(flagged, dtype=torch.bool))


def modules_above(model: nn.Module, layer: str, sample: torch.Tensor) -> list[str]:
    """Names of the leaf modules whose input depends on ``layer``'s output (see the module doc).

    ``model`` is probed with every parameter's ``requires_grad`` off and restored after.
    """
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    above: list[str] = []
    target = model.get_submodule(layer)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with HookSession() as hooks:
            hooks.capture(target, layer, cut_graph=True, grad_from_here=True)
            for name, module in model.named_modules():
                if next(module.children(), None) is not None or not name:
                    continue
                if name == layer or name.startswith(layer + "."):
                    continue

                def record(_module: nn.Module, inputs: Any, name: str = name) -> None:
                    if any(torch.is_tensor(t) and t.requires_grad for t in inputs):
                        above.append(name)

                hooks.forward_pre_hook(module, record)
            with torch.no_grad():
                model(sample)
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
    return list(dict.fromkeys(above))


TRAINABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Module kinds a training correction may change (norms stay frozen, as in RR-ClArC)."""


def trainable_parameters(model: nn.Module, names: Sequence[str], scope: str
                         ) -> dict[str, nn.Parameter]:
    """The parameters a correction trains: of the modules ``names`` (above the layer), only
    ``nn.Linear`` for ``scope="linear"``, every linear and convolution for ``"above"``."""
    kinds = (nn.Linear,) if scope == "linear" else TRAINABLE
    chosen = {}
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, kinds):
            for key, p in module.named_parameters(recurse=False):
                chosen[f"{name}.{key}"] = p
    if not chosen:
        where = "linear layer" if scope == "linear" else "linear or convolution layer"
        raise CorrectionError(f"no {where} lies above the correction's layer, so nothing can "
                              "be trained; choose an earlier --layer"
                              + (" or --train above" if scope == "linear" else ""))
    return chosen


def settings_key(settings: dict[str, Any], *tensors: torch.Tensor) -> str:
    """A key of everything that determines a training correction's result."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for tensor in tensors:
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


class Checkpoint:
    """A training correction's state after each epoch, in ``folder/checkpoint.pt``.

    Only plain tensors, numbers and strings are stored, read back with
    ``torch.load(weights_only=True)``; the file is replaced atomically, so a kill leaves
    the last complete epoch.
    """

    NAME = "checkpoint.pt"

    def __init__(self, folder: str | os.PathLike[str] | None, key: str) -> None:
        self.path = None if folder is None else Path(os.fspath(folder)) / self.NAME
        self.key = key
        self.note = ""

    def load(self) -> dict[str, Any] | None:
        """The saved state for this key, or None (none, unreadable, or another key)."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a torn or foreign file: start again, and say so
            self.note = f"the checkpoint {self.path} was unreadable ({type(error).__name__}); " \
                        "started again"
            return None
        if state.get("key") != self.key:
            self.note = (f"the checkpoint {self.path} was made with other settings or data; "
                         "started again")
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Replace the checkpoint with ``state`` (atomically)."""
        if self.path is None:
            return

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.path) as temporary:
            torch.save({**state, "key": self.key}, temporary)

    def remove(self) -> None:
        """Delete the checkpoint once the correction is written."""
        if self.path is not None and self.path.is_file():
            self.path.unlink()
