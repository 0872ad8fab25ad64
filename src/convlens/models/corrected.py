"""A corrected model as a folder: ``FIXED/card.json`` + ``FIXED/projection.safetensors``.

The card says everything needed to rebuild the corrected model and to reproduce the
correction: the original model's source (what ``cl.load_model`` was given: a bundled name,
a factory or a file, the weights file with its SHA-256, the labels, the preprocessing), the
method, the layer, the strategy and the audit it came from, the classes the direction was
estimated in. The projection's tensors (direction, reference) are the new weights. Loading
(``cl.load_model("FIXED/")``, any command's ``--model FIXED/``) rebuilds the original model
from its source, checks the weights file is the one corrected, and inserts the projection
where it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from convlens.errors import ModelLoadError
from convlens.io.datasets import file_digest as sha256_of

CARD = "card.json"
PROJECTION = "projection.safetensors"
FORMAT = 1


def is_correction(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a corrected-model folder (it holds a card of ours)."""
    folder = Path(os.fspath(path))
    return folder.is_dir() and (folder / CARD).is_file()


def load_correction(folder: str | os.PathLike[str], *, device: Any = "auto") -> Any:
    """The corrected Classifier of ``folder`` (see the module doc).

    Raises:
        ModelLoadError: an unreadable card, a missing or changed weights file, a projection
            that does not fit the layer.
    """
    import json

    from safetensors.torch import load_file

    from convlens.models.loading import load_model
    from convlens.models.projection import insert_projection

    folder = Path(os.fspath(folder))
    try:
        card = json.loads((folder / CARD).read_text(encoding="utf-8"))
        source, preprocessing = card["source"], card["preprocessing"]
        tensors = load_file(str(folder / PROJECTION))
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"{folder} is not a readable corrected model ({error}); write it "
                             "again with `convlens correct`") from None
    if card.get("format") != FORMAT or card.get("method") != "pclarc":
        raise ModelLoadError(f"{folder}/{CARD}: format {card.get('format')!r}, method "
                             f"{card.get('method')!r}; this convlens reads format {FORMAT}, "
                             "method pclarc")
    weights = source.get("weights")
    if weights is not None:
        if not Path(weights).is_file():
            raise ModelLoadError(f"the corrected model's original weights {weights} are gone; "
                                 "put them back there (the card records their path)")
        if sha256_of(Path(weights)) != source.get("weights_sha256"):
            raise ModelLoadError(f"{weights} changed since the correction (SHA-256 differs): "
                                 "the projection was estimated for the old weights; correct "
                                 "the new model again")
    original = load_model(source["model"], weights=weights, labels=card.get("labels"),
                          device=device, trust_model=bool(source.get("trust_model")),
                          **{k: tuple(v) if isinstance(v, list) else v
                             for k, v in preprocessing.items() if v is not None})
    module = insert_projection(original.module, card["layer"], tensors["direction"],
                               tensors["reference"], pooled=bool(card.get("pooled")))
    return original.with_module(
        module, name=f"{original.name} (P-ClArC: strategy {card.get('strategy')} at "
                     f"{card['layer']})")
