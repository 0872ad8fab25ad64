"""A corrected model as a folder: ``FIXED/card.json``, ``FIXED/projection.safetensors`` and,
for a correction that trained, ``FIXED/weights.safetensors``.

The card says everything needed to rebuild the corrected model and to reproduce the
correction: the original model's source (what ``cl.load_model`` was given: a bundled name,
a factory or a file, the weights file with its SHA-256, the labels, the preprocessing), the
method, the layer, the strategy and the audit it came from, the classes the direction was
estimated in, and for a training method its data, settings, seed and history. The
projection's tensors (direction, reference) are what P-ClArC inserts; the trained tensors
(by ``state_dict`` key, only those that changed) are what RR-ClArC and the last-layer refit
learned. Loading (``cl.load_model("FIXED/")``, any command's ``--model FIXED/``) rebuilds the
original model from its source, checks the weights file is the one corrected, inserts the
projection where it was (``projected``) and loads the trained tensors (``weights``, checked
against their SHA-256 and the network's keys and shapes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convlens.errors import ModelLoadError
from convlens.io.datasets import file_digest as sha256_of
from convlens.models.classifier import Classifier
from convlens.models.projection import insert_projection

CARD = "card.json"
PROJECTION = "projection.safetensors"
WEIGHTS = "weights.safetensors"
FORMAT = 2
READS = (1, 2)
"""Card formats this convlens reads (1: P-ClArC only, before the training methods)."""
METHODS = {"pclarc": "P-ClArC", "rrclarc": "RR-ClArC", "last-layer": "last layer"}


def is_correction(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a corrected-model folder (it holds a card of ours)."""
    folder = Path(os.fspath(path))
    return folder.is_dir() and (folder / CARD).is_file()


def load_correction(folder: str | os.PathLike[str], load_base: Callable[..., Classifier], *,
                    device: Any = "auto") -> Classifier:
    """The corrected Classifier of ``folder`` (see the module doc).

    ``load_base`` rebuilds the original model from the card's source (``load_model``, passed
    in by :mod:`convlens.models.loading`, which reads this folder: the dependency runs one way).

    Raises:
        ModelLoadError: an unreadable card, a missing or changed weights file, a projection
            that does not fit the layer.
    """
    from safetensors.torch import load_file

    folder = Path(os.fspath(folder))
    try:
        card = json.loads((folder / CARD).read_text(encoding="utf-8"))
        source, preprocessing = card["source"], card["preprocessing"]
        tensors = load_file(str(folder / PROJECTION))
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"{folder} is not a readable corrected model ({error}); write it "
                             "again with `convlens correct`") from None
    method = card.get("method")
    if card.get("format") not in READS or method not in METHODS:
        raise ModelLoadError(f"{folder}/{CARD}: format {card.get('format')!r}, method "
                             f"{method!r}; this convlens reads formats {READS}, methods "
                             f"{', '.join(METHODS)}")
    weights = source.get("weights")
    if weights is not None:
        if not Path(weights).is_file():
            raise ModelLoadError(f"the corrected model's original weights {weights} are gone; "
                                 "put them back there (the card records their path)")
        if sha256_of(Path(weights)) != source.get("weights_sha256"):
            raise ModelLoadError(f"{weights} changed since the correction (SHA-256 differs): "
                                 "the projection was estimated for the old weights; correct "
                                 "the new model again")
    original = load_base(source["model"], weights=weights, labels=card.get("labels"),
                          device=device, trust_model=bool(source.get("trust_model")),
                          **{k: tuple(v) if isinstance(v, list) else v
                             for k, v in preprocessing.items() if v is not None})
    module = original.module
    if card.get("projected", card.get("format") == 1):
        module = insert_projection(module, card["layer"], tensors["direction"],
                                   tensors["reference"], pooled=bool(card.get("pooled")))
    if card.get("weights"):
        module = _load_trained(folder, card["weights"], module)
    return original.with_module(
        module, name=f"{original.name} ({METHODS[method]}: strategy {card.get('strategy')} at "
                     f"{card['layer']})")


def _load_trained(folder: Path, weights: dict[str, Any], module: Any) -> Any:
    """``module`` (the freshly rebuilt network) with the trained tensors of ``folder``."""
    from safetensors.torch import load_file

    path = folder / str(weights.get("file", WEIGHTS))
    if not path.is_file() or sha256_of(path) != weights.get("sha256"):
        raise ModelLoadError(f"{path} is missing or changed since the correction (SHA-256 "
                             "differs); write the corrected model again with `convlens correct`")
    trained = load_file(str(path))
    state = module.state_dict()
    wrong = [k for k, v in trained.items() if k not in state or state[k].shape != v.shape]
    if wrong:
        raise ModelLoadError(f"{path}: {', '.join(wrong[:3])} do not fit the rebuilt network "
                             "(another model or version?); correct the model again")
    module.load_state_dict(trained, strict=False)
    return module
