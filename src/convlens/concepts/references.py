"""Reference sets: for every channel of a layer, the images it matters most for, in ONE pass.

Concept Relevance Propagation shows a channel's concept as the image patches it is most
relevant for (*relevance maximisation*) next to those that make it fire most (*activation
maximisation*) (Achtibat et al. 2023). zennit-crp collects both in a pass over the data and
crops the patches afterwards; here the pass is the audit's streaming pass shape:

* per batch (:class:`ReferenceWorker`), ONE forward with the layer tapped
  (:func:`convlens.attribution.crp.layer_graph` with ``maps=False``: the layers below the tap
  run their plain forward) and the top part of one backward give the layer's activations
  ``A (N, C, h, w)`` and relevances ``R (N, C, h, w)`` for each image's predicted class.
  Per image and channel: the **relevance score** is ``R_c``, the channel's relevance summed
  over positions (zennit-crp's default ``"sum"`` for relevance maximisation), at its hottest
  position ``argmax R``; the **activation score** is ``max A`` (zennit-crp's ``"max"``) at
  its position. Each batch keeps only its own top ``k`` per channel;
* the batches run on an engine (:mod:`convlens.engines`, local or Ray) and each batch's
  top-k lands in a :class:`~convlens.store.ResultStore` shard (``(C, k)`` arrays and
  one record per image, keyed by content and configuration), so a killed run resumes
  without recomputing finished images;
* the reference set is the merge of the stored partial top-ks: a running ``(C, k)`` array
  per score, merged shard by shard, so memory is ``C x k`` whatever the number of images.
  Ties are broken by the image's place in the dataset, so the set does not depend on the
  order units finish in.

``OUT/references.json`` (layer, k, rule, model fingerprint, the images referenced, the
errors) and ``OUT/references.npz`` (the arrays) hold the result. Patches are not stored:
:mod:`convlens.concepts.patches` recomputes a box from the image and the position when it
is shown. See docs/architecture.md, "Concepts".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens._hooks import evaluation_mode, gradients_enabled
from convlens.attribution.core import Problem, _prepare_x
from convlens.attribution.crp import RULES, _lrp_parameters, layer_graph
from convlens.concepts.patches import patch_box
from convlens.engines import WorkerFactory, get_engine
from convlens.engines.stored import StoredPass, stream_to_store
from convlens.errors import ReferenceSetError
from convlens.files import (
    check_not_input,
    check_output,
    claim_output,
    write_array_atomic,
    write_json_atomic,
)
from convlens.io.datasets import dataset_relative_path, no_images_message, read_dataset
from convlens.models.classifier import Classifier, ModelLike
from convlens.models.fingerprint import model_fingerprint
from convlens.models.layers import resolve_layer
from convlens.progress import ProgressCallback, ProgressLike, resolve_progress
from convlens.store import ResultStore

MODES = ("relevance", "activation")
STORE_FOLDER = "store"
REFERENCES_JSON = "references.json"
REFERENCES_NPZ = "references.npz"
VERSION = 1
SCORES = {
    "relevance": "R_c: the channel's relevance at the layer summed over positions, for the "
                 "image's predicted class (zennit-crp's 'sum'); position: argmax of R",
    "activation": "the channel's activation maximum over positions (zennit-crp's 'max'); "
                  "position: its argmax",
}


@dataclass
class ReferenceSettings:
    """What the pass computes; every field is part of the store's configuration."""

    layer: str
    k: int = 8
    rule: str = "auto"
    composite: str = "epsilon_plus_flat"
    batch_size: int = 32


# ------------------------------------------------------------------ top-k arrays


@dataclass
class TopK:
    """Per channel the ``k`` best ``(score, image, position)``, best first.

    ``image`` is -1 (score -inf) where fewer than ``k`` images were seen. ``image`` indexes
    whatever list of images the caller keeps (a batch's rows, the dataset's entries).
    """

    score: np.ndarray  # (C, k) float64
    image: np.ndarray  # (C, k) int64
    position: np.ndarray  # (C, k, 2) int32: (row, col) on the layer's output

    @classmethod
    def empty(cls, channels: int, k: int) -> TopK:
        return cls(np.full((channels, k), -np.inf), np.full((channels, k), -1, np.int64),
                   np.zeros((channels, k, 2), np.int32))

    def merge(self, other: TopK, k: int) -> TopK:
        """The best ``k`` of both per channel; ties go to the smaller image index."""
        score = np.concatenate([self.score, other.score], axis=1)
        image = np.concatenate([self.image, other.image], axis=1)
        position = np.concatenate([self.position, other.position], axis=1)
        return _select(score, image, position, k)


def _select(score: np.ndarray, image: np.ndarray, position: np.ndarray, k: int) -> TopK:
    """Top ``k`` per row of ``score`` (higher first, then smaller ``image``; empty slots,
    image -1, last). Rows are at most ``2k`` wide when merging, a batch wide otherwise: one
    sort of that width, no heap needed for ``C x k`` memory."""
    score = np.where(np.isnan(score), -np.inf, score)  # a NaN never ranks
    empty = image < 0
    rank_image = np.where(empty, np.iinfo(np.int64).max, image)
    order = np.lexsort((rank_image, -score), axis=1)[:, :k]
    out = TopK(np.take_along_axis(score, order, 1), np.take_along_axis(image, order, 1),
               np.take_along_axis(position, order[..., None], 1))
    if out.score.shape[1] < k:  # fewer candidates than k: pad with empty slots
        pad = TopK.empty(score.shape[0], k - out.score.shape[1])
        out = TopK(np.concatenate([out.score, pad.score], 1),
                   np.concatenate([out.image, pad.image], 1),
                   np.concatenate([out.position, pad.position], 1))
    out.score = np.where(out.image < 0, -np.inf, out.score)
    return out


def batch_scores(activation: torch.Tensor, relevance: torch.Tensor
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``(N, C, h, w)`` activations and relevances -> per mode ``(scores (N, C), positions
    (N, C, 2))``: ``R_c`` at ``argmax R`` and ``max A`` at ``argmax A``."""
    n, c, _h, w = activation.shape
    flat_r = relevance.detach().double().flatten(2)
    flat_a = activation.detach().double().flatten(2)
    hot_r = flat_r.argmax(2)
    act, hot_a = flat_a.max(2)

    def positions(index: torch.Tensor) -> np.ndarray:
        return torch.stack([index // w, index % w], -1).cpu().numpy().astype(np.int32)

    return {"relevance": (flat_r.sum(2).cpu().numpy(), positions(hot_r)),
            "activation": (act.cpu().numpy(), positions(hot_a))}


def top_of_batch(scores: np.ndarray, positions: np.ndarray, k: int,
                 images: np.ndarray | None = None) -> TopK:
    """Per channel the top ``k`` of a batch's ``(N, C)`` scores; ``images`` (default the rows
    0..N-1) names each row."""
    n, _c = scores.shape
    images = np.arange(n) if images is None else np.asarray(images)
    image = np.broadcast_to(images[None, :], scores.T.shape).astype(np.int64)
    return _select(scores.T.astype(np.float64), image.copy(),
                   positions.transpose(1, 0, 2).copy(), k)


# ------------------------------------------------------------------ the worker


def reference_batch(classifier: Classifier, batch: Any, *, settings: ReferenceSettings
                    ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The pass's per-batch work on an engine (:class:`convlens.engines.WorkerFactory`):
    one decoded batch in, its records and per-channel top-k arrays out."""
    return ReferenceWorker(classifier, settings)(batch)


class ReferenceWorker:
    """One batch in; its records and its per-channel top-k arrays out (nothing written)."""

    def __init__(self, classifier: Classifier, settings: ReferenceSettings) -> None:
        self.classifier = classifier
        self.settings = settings

    def layer_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                      torch.Tensor, str]:
        """Activations, relevances (both ``(N, C, h, w)``), logits and the rule, one pass."""
        classifier, settings = self.classifier, self.settings
        module = classifier.module
        with evaluation_mode(module), gradients_enabled():
            x = _prepare_x(x.to(classifier.device), module)
            problem = Problem(module, x, None, classifier.labels, settings.layer,
                              classifier.output, classifier)
            graph = layer_graph(problem, rule=settings.rule, composite=settings.composite,
                                maps=False, **_lrp_parameters({}))
            relevance = graph.relevance(graph.layer_signal(keep=False)).detach()
        activation = graph.activation.detach()
        if activation.dim() != 4:
            raise ReferenceSetError(f"layer {settings.layer!r} outputs shape "
                                 f"{tuple(activation.shape[1:])}; reference sets need a "
                                 "spatial (C, h, w) output: choose a convolutional layer")
        return activation, relevance, graph.logits.detach(), graph.rule

    def __call__(self, batch: Any) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        activation, relevance, logits, rule = self.layer_outputs(batch.x)
        k = self.settings.k
        arrays: dict[str, np.ndarray] = {}
        for mode, (scores, positions) in batch_scores(activation, relevance).items():
            top = top_of_batch(scores, positions, k)
            arrays[f"{mode}_score"] = top.score
            arrays[f"{mode}_row"] = top.image
            arrays[f"{mode}_position"] = top.position
        arrays["relevance_total"] = relevance.double().flatten(2).sum(2).sum(0).cpu().numpy()
        predicted = logits.argmax(1).cpu()
        records = [{"key": item.key, "path": item.relpath, "label": item.label,
                    "predicted_index": int(predicted[row]), "row": row, "rule": rule,
                    "grid": list(activation.shape[2:])}
                   for row, item in enumerate(batch.items)]
        return records, arrays


# ------------------------------------------------------------------ the pass


PassResult = StoredPass  # what one run of the pass saw (engines/stored.py)


def run_references_pass(classifier: Classifier, dataset: Any, store: ResultStore,
                        settings: ReferenceSettings, *, engine: Any = None,
                        progress: ProgressCallback | None = None) -> PassResult:
    """Compute the per-batch top-ks of every image of ``dataset`` not yet in ``store``."""
    engine = engine or get_engine("local")
    return stream_to_store(engine, dataset, classifier.preprocessing,
                           WorkerFactory(reference_batch, classifier, settings=settings), store,
                           batch_size=settings.batch_size, stage="references", progress=progress)


def merge_store(store: ResultStore, order: dict[str, int], k: int
                ) -> tuple[dict[str, TopK], np.ndarray, list[dict[str, Any]]]:
    """The reference set from the stored partial top-ks, shard by shard.

    ``order`` maps an image's relative path to its place in the dataset (the tie-break and
    the image index of the result). Returns per mode the merged :class:`TopK` (``image``
    indexing the dataset), the channels' total relevance, and one record per image seen.
    """
    merged: dict[str, TopK] = {}
    total: np.ndarray | None = None
    images: dict[int, dict[str, Any]] = {}
    seen: set[str] = set()
    for shard in store.shards():
        records = [r for r in store.shard_records(shard) if "row" in r]
        if not records or any(r["key"] in seen for r in records):
            continue  # a shard written twice (two writers): its images are counted once
        seen.update(r["key"] for r in records)
        place = np.full(max(r["row"] for r in records) + 1, -1, np.int64)
        for record in records:
            index = order.get(record["path"], len(order) + len(images))
            place[record["row"]] = index
            images[index] = record
        for mode in MODES:
            rows = np.asarray(store.read_array(shard, f"{mode}_row"))
            part = TopK(np.asarray(store.read_array(shard, f"{mode}_score"), np.float64),
                        np.where(rows >= 0, place[np.clip(rows, 0, None)], -1),
                        np.asarray(store.read_array(shard, f"{mode}_position"), np.int32))
            merged[mode] = merged[mode].merge(part, k) if mode in merged else \
                _select(part.score, part.image, part.position, k)
        shard_total = np.asarray(store.read_array(shard, "relevance_total"), np.float64)
        total = shard_total if total is None else total + shard_total
    if total is None:
        raise ReferenceSetError("no image was computed, so there is no reference set; check "
                             "the errors listed for the data")
    return merged, total, [images[i] for i in sorted(images)]


# ------------------------------------------------------------------ the result


@dataclass
class Reference:
    """One entry of a channel's reference set."""

    path: Path
    score: float
    box: tuple[int, int, int, int] | None
    position: tuple[int, int]
    key: str
    relpath: str


@dataclass
class ReferenceSets:
    """A layer's reference sets: per channel and mode the top-k images, best first.

    Attributes:
        layer: The layer's dotted name.
        k: Images per channel and mode.
        rule: The relevance rule used (``"lrp:<composite>"`` or ``"gradient_x_activation"``).
        scores: Per mode a :class:`TopK` whose ``image`` indexes :attr:`images`.
        relevance_total: ``(C,)`` each channel's relevance summed over the data.
        images: ``[{"key", "path", "file", "label", "predicted_index"}]`` of every image
            referenced.
        meta: The rest of ``references.json`` (model, fingerprint, data, errors...).
        out: The folder the set was written to.
        classifier: The model, to recompute patch boxes (None: :meth:`top` gives no boxes).
    """

    layer: str
    k: int
    rule: str
    scores: dict[str, TopK]
    relevance_total: np.ndarray
    images: list[dict[str, Any]]
    meta: dict[str, Any]
    out: Path | None = None
    classifier: Classifier | None = None
    _boxes: dict[tuple[int, int, str], tuple[int, int, int, int]] = field(
        default_factory=dict, repr=False)

    @property
    def channels(self) -> int:
        return int(self.relevance_total.shape[0])

    def ranked_channels(self) -> list[int]:
        """Channels by total relevance over the data, most relevant first."""
        return [int(c) for c in np.argsort(-self.relevance_total, kind="stable")]

    def __repr__(self) -> str:
        return (f"ReferenceSets(layer={self.layer!r}, channels={self.channels}, k={self.k}, "
                f"images={len(self.images)}, rule={self.rule!r})")

    def entries(self, channel: int, mode: str = "relevance") -> Iterator[tuple[int, float,
                                                                                tuple[int, int]]]:
        """``(image index, score, position)`` of ``channel``'s set, best first."""
        if mode not in MODES:
            raise ReferenceSetError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) \
                or not 0 <= channel < self.channels:
            raise ReferenceSetError(f"channel {channel!r} does not exist: layer {self.layer!r} "
                                 f"has {self.channels} channels (0..{self.channels - 1})")
        top = self.scores[mode]
        for image, score, position in zip(top.image[channel], top.score[channel],
                                          top.position[channel]):
            if image >= 0:
                yield int(image), float(score), (int(position[0]), int(position[1]))

    def top(self, channel: int, mode: str = "relevance", *, boxes: bool = True
            ) -> list[Reference]:
        """``channel``'s reference images, best first: path, score and the patch box.

        The box (input pixels, see :func:`convlens.concepts.patches.patch_box`) is
        recomputed from the image and the stored position when asked for (one forward and
        backward per image); ``None`` without a classifier or with ``boxes=False``.
        """
        result = []
        for image, score, position in self.entries(channel, mode):
            record = self.images[image]
            box = self.box(channel, image, mode) if boxes and self.classifier is not None \
                else None
            result.append(Reference(Path(record["file"]), score, box, position,
                                    record["key"], record["path"]))
        return result

    def box(self, channel: int, image: int, mode: str) -> tuple[int, int, int, int]:
        """The patch box of ``channel`` in image ``image`` (cached)."""
        key = (channel, image, mode)
        if key not in self._boxes:
            position = next(p for i, _s, p in self.entries(channel, mode) if i == image)
            x = self.load(image)[0]
            self._boxes[key] = patch_box(self.classifier, x, self.layer, channel, position,
                                         mode, rule=self.meta.get("rule_option", "auto"))
        return self._boxes[key]

    def load(self, image: int) -> tuple[torch.Tensor, Any, Any]:
        """Image ``image`` as the network saw it ``(1, C, H, W)``, its geometry, its photo."""
        record = self.images[image]
        tensor, geometry, photo = self.classifier.preprocessing.load_file(
            record["file"], keep_photo=True)
        return tensor[None].to(self.classifier.device), geometry, photo

    @classmethod
    def load_folder(cls, out: str | os.PathLike[str], classifier: Classifier | None = None
                    ) -> ReferenceSets:
        """Read ``OUT/references.json`` and ``OUT/references.npz``."""
        out = Path(out)
        path = out / REFERENCES_JSON
        if not path.is_file():
            raise ReferenceSetError(f"{out} holds no {REFERENCES_JSON}; compute the reference "
                                 "set first (convlens concepts atlas, cl.reference_sets)")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if classifier is not None:
            found = model_fingerprint(classifier.module, classifier.labels,
                                      classifier.preprocessing)
            if found != meta.get("model_fingerprint"):
                raise ReferenceSetError(
                    f"{out} holds the reference sets of another model ({meta.get('model')}, "
                    f"fingerprint {meta.get('model_fingerprint')}; this one is {found}): "
                    "patches would be cut in the wrong places; load it with the model that "
                    "computed it, or compute it again")
        with np.load(out / REFERENCES_NPZ, allow_pickle=False) as arrays:
            scores = {mode: TopK(arrays[f"{mode}_score"], arrays[f"{mode}_image"],
                                 arrays[f"{mode}_position"]) for mode in MODES}
            total = arrays["relevance_total"]
        return cls(meta["layer"], meta["k"], meta["rule"], scores, total, meta["images"], meta,
                   out, classifier)


def reference_sets(classifier: ModelLike, data: str | os.PathLike[str], layer: str | None = None, *,
                   k: int = 8, out: str | os.PathLike[str] = "convlens-references",
                   engine: Any = "local", engine_options: dict[str, Any] | None = None,
                   batch_size: int = 32, workers: int = 0, rule: str = "auto",
                   layout: str = "auto", overwrite: bool = False,
                   progress: ProgressLike = None) -> ReferenceSets:
    """Every channel's top-``k`` reference images of ``layer`` over ``data``, in one pass.

    Args:
        classifier: A :class:`~convlens.models.classifier.Classifier`.
        data: A folder of images (plain or ImageFolder) or a CSV, as for :func:`convlens.audit`.
        layer: A layer with a spatial output (default: the model's default layer).
        k: Images per channel and mode (relevance- and activation-maximisation).
        out: Output folder: ``references.json``, ``references.npz``, ``store/`` (resumable).
        engine: ``"local"``, ``"ray"`` or an engine object (:mod:`convlens.engines`); every
            engine writes the same store, and a run resumes on another.
        engine_options: Given to the engine (``address``, ``actors``... for Ray).
        batch_size, workers: Images per forward; decoding processes (local engine).
        rule: ``"auto"``, ``"lrp"`` or ``"gradient"``, as for :func:`convlens.concept_maps`.
        overwrite: Replace results of another configuration in ``out``.
        progress: A callback given a ``references`` event per batch, ``True`` (plain lines,
            or a bar in a notebook) or ``False``/None (see
            :func:`convlens.progress.resolve_progress`).

    Returns:
        A :class:`ReferenceSets`; ``.top(channel, "relevance")`` lists path, score and box.

    Example:
        >>> refs = cl.reference_sets(clf, "photos/", k=8, out="refs")  # doctest: +SKIP
        >>> refs.top(refs.ranked_channels()[0])[0].path                # doctest: +SKIP
    """
    if not isinstance(classifier, Classifier):
        raise ReferenceSetError(f"reference_sets needs a convlens.Classifier (cl.load_model() or "
                             f"cl.Classifier(module, labels=...)), got "
                             f"{type(classifier).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
        raise ReferenceSetError(f"k must be an integer from 1 to 1000, got {k!r}")
    if rule not in RULES:
        raise ReferenceSetError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    progress = resolve_progress(progress)
    layer_name = resolve_layer(classifier.module, layer)[0] if layer is not None \
        else classifier.default_layer()
    out = Path(out)
    check_not_input(out, [data])
    dataset = read_dataset(data, layout=layout, exclude=[out])
    if not dataset.entries:
        raise ReferenceSetError(no_images_message(data, dataset))
    check_output(out)
    options = dict(engine_options or {})
    if engine in (None, "local"):
        options.setdefault("workers", workers)
    runner = get_engine(engine, **options)
    fingerprint = model_fingerprint(classifier.module, classifier.labels,
                                    classifier.preprocessing)
    settings = ReferenceSettings(layer=layer_name, k=k, rule=rule, batch_size=batch_size)
    config = {"kind": "references", "version": VERSION, "model": classifier.name,
              "model_fingerprint": fingerprint, "layer": layer_name, "k": k, "rule": rule,
              "composite": settings.composite, "batch_size": batch_size}
    with claim_output(out, overwrite=overwrite, inputs=[data], what="convlens references"):
        store = ResultStore(out / STORE_FOLDER, config, overwrite=overwrite)
        outcome = run_references_pass(classifier, dataset, store, settings, engine=runner,
                                      progress=progress)
        order = {entry.relpath: i for i, entry in enumerate(dataset.entries)}
        merged, total, records = merge_store(store, order, k)
        files = {entry.relpath: str(entry.path) for entry in dataset.entries}
        # only the images some channel refers to are listed; the arrays index this list
        used = sorted({int(i) for top in merged.values() for i in top.image.ravel() if i >= 0})
        renumber = np.full(max(used, default=0) + 2, -1, np.int64)
        renumber[used] = np.arange(len(used))
        by_index = {order.get(r["path"], -1): r for r in records}
        images = [{"key": by_index[i]["key"], "path": by_index[i]["path"],
                   "file": files.get(by_index[i]["path"], by_index[i]["path"]),
                   "label": by_index[i]["label"],
                   "predicted": classifier.label(by_index[i]["predicted_index"])}
                  for i in used]
        relative = {str(e.path): e.relpath for e in dataset.entries}
        errors = list({dataset_relative_path(p.path, dataset.root, relative): p.reason
                       for p in outcome.problems}.items())
        first = records[0] if records else {}
        meta = {"version": VERSION, "model": classifier.name, "model_fingerprint": fingerprint,
                "layer": layer_name, "k": k, "rule": first.get("rule", rule),
                "rule_option": rule, "grid": first.get("grid"),
                "input_size": list(classifier.preprocessing.input_size),
                "data": str(data), "root": str(dataset.root), "count": len(records),
                "channels": int(total.shape[0]), "scores": SCORES,
                "images": images,
                "errors": [{"path": path, "reason": reason} for path, reason in errors]}
        arrays = {"relevance_total": total}
        for mode, top in merged.items():
            arrays[f"{mode}_score"] = top.score
            arrays[f"{mode}_image"] = np.where(top.image >= 0,
                                               renumber[np.clip(top.image, 0, None)], -1)
            arrays[f"{mode}_position"] = top.position
        write_array_atomic(out / REFERENCES_NPZ, arrays)
        write_json_atomic(out / REFERENCES_JSON, meta)
    sets = ReferenceSets.load_folder(out, classifier)
    return sets
