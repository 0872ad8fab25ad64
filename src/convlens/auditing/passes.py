"""The audit's one streaming pass: predictions and small attribution maps for every image.

Per batch: decode (DataLoader workers, :func:`convlens.io.datasets.batches`), one forward and
one backward for the attribution of the predicted class (the logits are taken from that same
forward, so predictions cost nothing extra), a second attribution for the true class of the
mistakes only, the requested maps-based metrics on the full-resolution maps of the
predicted class (:mod:`convlens.auditing.scoring`), then one append to the
:class:`~convlens.store.ResultStore`: a JSON-lines shard of records and the maps as
float16 side arrays, downsized to ``map_size`` (32x32 by default: 2 KiB per map), and the
*features*: the feature layer's activations pooled over space (mean and max per channel,
float16), which the cross-class strategies are found in
(:mod:`convlens.auditing.strategies`). For the CAM family they come from the attribution's
own forward; other methods cost one more forward without gradients. With concepts
(``concept_layer``), the *concepts*: every channel's relevance ``R_c`` for the predicted
class at that layer (CRP's channel relevance, float16) and the flat index of each channel's
hottest position (uint16), from which the report crops reference patches without a second
pass. For a gradient CAM whose layer is the concept layer they are gradient x activation
from the CAM's own capture (no extra work but a product and a sum); otherwise one
:func:`convlens.attribution.crp.layer_relevance` call (a forward and the top part of a
backward). Nothing
accumulates in memory; finished images (keyed by their content and the configuration) are
skipped on a rerun, so a killed run resumes.

See docs/architecture.md, "Layers and the direction data flows": audit uses io, models,
attribution and jobs, never present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens._hooks import HookSession
from convlens.attribution.core import Method, attribute, get_method, observed_cam_signals
from convlens.attribution.crp import GRADIENT_X_ACTIVATION, layer_relevance
from convlens.auditing.scoring import score_batch
from convlens.engines import Engine, WorkerFactory, get_engine
from convlens.engines.stored import StoredPass, stream_to_store
from convlens.io.datasets import Batch, Dataset
from convlens.models.classifier import Classifier
from convlens.models.fingerprint import model_fingerprint  # noqa: F401  (kept importable here)
from convlens.progress import ProgressCallback
from convlens.store import ResultStore

FLOAT16_MAX = float(np.finfo(np.float16).max)
TOP = 5


class _Recorder(nn.Module):
    """Runs the user's module and keeps its last output (detached), so that the attribution's
    own forward also gives us the logits. It holds the module; it changes nothing on it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == x.shape[0]:
            self.last = out.detach()
        return out


def downsize(raw: torch.Tensor, spec: Method, size: int) -> np.ndarray:
    """Raw attributions ``(N, C, H, W)`` -> float16 maps ``(N, size, size)`` for storage.

    The map is the method's own (:meth:`Method.to_map`: channels reduced as presentation
    does, an offset (RISE) removed), resized with area averaging (shrinking) or bilinear
    interpolation (a 7x7 CAM growing to 32x32). Values are not normalised: SpRAy does that,
    and a weak map stays weak. Values are clipped to the float16 range.
    """
    maps = spec.to_map(raw.detach().float()).unsqueeze(1)
    if maps.shape[-1] >= size and maps.shape[-2] >= size:
        maps = F.adaptive_avg_pool2d(maps, size)
    else:
        maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    maps = torch.nan_to_num(maps[:, 0], nan=0.0).clamp(-FLOAT16_MAX, FLOAT16_MAX)
    return maps.cpu().numpy().astype(np.float16)


def pool_features(output: torch.Tensor) -> torch.Tensor:
    """A layer's output ``(N, C, H, W)`` (or tokens ``(N, T, C)``) -> ``(N, 2C)``: the mean and
    the maximum of every channel over space, float32.

    The mean says how much of a channel the image holds, the maximum whether it fires
    anywhere at all: a small artefact (a tag in a corner) lifts a channel's maximum while
    barely moving its mean.
    """
    values = output.detach().float()
    if values.dim() == 4:
        flat = values.flatten(2)
    elif values.dim() == 3:
        flat = values.transpose(1, 2)
    else:
        return values.flatten(1)
    return torch.cat([flat.mean(dim=2), flat.amax(dim=2)], dim=1)


@dataclass
class PassSettings:
    """What the pass computes; every field is part of the store's configuration."""

    method: str = "gradcam"
    layer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    map_size: int = 32
    batch_size: int = 32
    workers: int = 0
    metrics: list[Any] = field(default_factory=list)  # AuditMetric, see auditing/scoring.py
    feature_layer: str | None = None  # pooled activations recorded here (None: none)
    concept_layer: str | None = None  # channel relevances recorded here (None: none)
    concept_rule: str = "auto"  # crp's rule: "gradient" (a CAM's own capture) or "auto"


PassOutcome = StoredPass  # what one run of the pass saw (engines/stored.py)


def run_pass(classifier: Classifier, dataset: Dataset, store: ResultStore,
             settings: PassSettings, *,
             progress: ProgressCallback | None = None, engine: Engine | None = None
             ) -> PassOutcome:
    """Predict and attribute every image of ``dataset`` not yet in ``store``.

    Args:
        classifier: A :class:`~convlens.models.classifier.Classifier` (labels, preprocessing).
        dataset: From :func:`convlens.io.datasets.read_dataset`.
        store: Opened with the audit's configuration; finished keys are skipped.
        settings: Method, layer (a resolved dotted name), options, map size, batching.
        progress: Called with ``stage="audit"`` after each batch.
        engine: Where the batches are computed (:mod:`convlens.engines`); default the
            local engine with ``settings.workers`` decoding processes. Whatever the engine,
            this process writes every result to ``store`` as it arrives.
    """
    engine = engine or get_engine("local", workers=settings.workers)
    return stream_to_store(engine, dataset, classifier.preprocessing,
                           WorkerFactory(audit_batch, classifier, settings=settings), store,
                           batch_size=settings.batch_size, stage="audit", progress=progress)


def audit_batch(classifier: Classifier, batch: Batch, *, settings: PassSettings
                ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The pass's per-batch work on an engine (:class:`convlens.engines.WorkerFactory`):
    one decoded batch in, its records and float16 maps out (nothing written here)."""
    return AuditWorker(classifier, settings)(batch)


class AuditWorker:
    """One batch in, its records and float16 maps out (nothing written here); built per
    batch by :func:`audit_batch` (a lookup of the method and the layers, no model work)."""

    def __init__(self, classifier: Classifier, settings: PassSettings) -> None:
        self.classifier = classifier
        self.settings = settings
        self.spec = get_method(settings.method)
        self.recorder = _Recorder(classifier.module)
        modules = dict(classifier.module.named_modules())
        self.layer = modules[settings.layer] if settings.layer and self.spec.needs_layer \
            else None
        self.feature_module = modules.get(settings.feature_layer) \
            if settings.feature_layer else None
        # the CAM's own activations and gradients are the concept layer's: reuse them
        self.free_concepts = (settings.concept_layer is not None and self.spec.combine is not None
                              and settings.concept_layer == settings.layer)
        labels = classifier.labels
        self.index_of = {name: i for i, name in enumerate(labels)} if labels else {}

    def __call__(self, batch: Batch) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """Records (one per decoded item) and ``{"maps", "truemaps"}`` for the store."""
        classifier, settings, spec, recorder = (self.classifier, self.settings, self.spec,
                                                self.recorder)
        x = batch.x.to(classifier.device)
        pooled: list[torch.Tensor] = []
        with HookSession() as hooks, observed_cam_signals() as signals:
            if self.feature_module is not None and spec.needs_layer:
                # The CAM family's first forward is the plain batch: its activations are
                # the features, at no extra cost.
                hooks.forward_hook(self.feature_module, _first_output(pooled, len(x)))
            raw = attribute(recorder, x, spec.name, target=None, layer=self.layer,
                            **settings.options)
        logits = recorder.last
        if logits is None or (self.feature_module is not None and not pooled):
            # a method that never ran the plain batch: one extra forward, without gradients
            with HookSession() as hooks, torch.no_grad():
                if self.feature_module is not None:
                    hooks.forward_hook(self.feature_module, _first_output(pooled, len(x)))
                plain = classifier.logits(x)
            logits = plain if logits is None else logits
        recorder.last = None
        probabilities = logits.float().softmax(dim=1).cpu()
        predicted = probabilities.argmax(dim=1)
        scores = score_batch(classifier.module, x, raw, spec.name, predicted, settings.metrics)
        maps = downsize(raw, spec, settings.map_size)
        truth = [self.index_of.get(item.label) if item.label is not None else None
                 for item in batch.items]
        wrong = [i for i, t in enumerate(truth) if t is not None and t != int(predicted[i])]
        true_maps = np.zeros((0, settings.map_size, settings.map_size), np.float16)
        if wrong:
            targets = torch.tensor([truth[i] for i in wrong])
            raw_true = attribute(recorder, x[wrong], spec.name, target=targets,
                                 layer=self.layer, **settings.options)
            recorder.last = None
            true_maps = downsize(raw_true, spec, settings.map_size)
        top = min(TOP, probabilities.shape[1])
        values, indices = probabilities.topk(top, dim=1)
        records = []
        for row, item in enumerate(batch.items):
            p = int(predicted[row])
            records.append({
                "key": item.key,
                "path": item.relpath,
                "label": item.label,
                "predicted": classifier.label(p),
                "predicted_index": p,
                "probability": round(float(probabilities[row, p]), 6),
                "top5": [[classifier.label(int(i)), round(float(v), 6)]
                         for v, i in zip(values[row], indices[row])],
                "correct": None if truth[row] is None else truth[row] == p,
                "row": row,
                "true_row": wrong.index(row) if row in wrong else None,
            })
            if settings.metrics:
                records[-1]["metrics"] = scores[row]
        arrays = {"maps": maps, "truemaps": true_maps}
        if settings.concept_layer is not None:
            relevance, rule = self._concepts(x, predicted, signals)
            arrays["concepts"], arrays["concept_at"], grid = concept_arrays(relevance)
            if records:  # said once per shard: the rule used and the layer's grid
                records[0]["concepts"] = {"rule": rule, "grid": grid}
        if pooled:
            arrays["features"] = pooled[0].clamp(-FLOAT16_MAX, FLOAT16_MAX).cpu().numpy() \
                .astype(np.float16)
        return records, arrays


    def _concepts(self, x: torch.Tensor, predicted: torch.Tensor, signals: list[Any]
                  ) -> tuple[torch.Tensor, str]:
        """The concept layer's relevance ``(N, C, h, w)`` for the predicted class, and the
        rule: from the CAM's own capture when it is that layer, else one
        :func:`~convlens.attribution.crp.layer_relevance` call."""
        if self.free_concepts and signals:
            _names, (activation,), (gradient,) = signals[0]
            gradient = torch.zeros_like(activation) if gradient is None else gradient
            return activation * gradient, GRADIENT_X_ACTIVATION

        return layer_relevance(self.classifier, x, self.settings.concept_layer,
                               target=predicted.to(x.device), rule=self.settings.concept_rule)


def concept_arrays(relevance: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A layer's relevance ``(N, C, h, w)`` -> the channel relevances ``(N, C)`` float16
    (clipped to its range), each channel's hottest position ``(N, C)`` uint16 (flat index
    into the ``h x w`` grid; 0 when the grid is larger than uint16 counts) and ``[h, w]``."""
    values = relevance.detach().float()
    if values.dim() == 2:
        values = values[:, :, None, None]
    grid = list(values.shape[2:]) if values.dim() == 4 else [int(np.prod(values.shape[2:])), 1]
    flat = values.flatten(2)
    channels = flat.sum(2).clamp(-FLOAT16_MAX, FLOAT16_MAX)
    at = flat.argmax(2) if flat.shape[2] <= np.iinfo(np.uint16).max else \
        torch.zeros_like(channels, dtype=torch.long)
    return (torch.nan_to_num(channels).cpu().numpy().astype(np.float16),
            at.cpu().numpy().astype(np.uint16), grid)


def _first_output(into: list[torch.Tensor], batch: int) -> Any:
    """A forward hook that keeps the pooled output of the first call on the whole batch."""

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if not into and isinstance(output, torch.Tensor) and output.shape[:1] == (batch,):
            into.append(pool_features(output))

    return hook
