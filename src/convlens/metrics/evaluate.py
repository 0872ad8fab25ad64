"""``evaluate``: which attribution method to believe, on *this* model and *these* photos.

Runs every requested method on the images (one target per image, resolved once), scores each
map with every requested metric (:mod:`convlens.metrics.core` registry), and summarises per
method and metric: the mean over images with a percentile-bootstrap 95 % interval, and a
ranking per metric. Every metric result carries a *card* (metric, preset, every option,
the methods' options and layer, model, input size, target rule, versions) and a
``settings_id`` per number hashed from the settings: two numbers are comparable only when
their ids match.

Images are processed ``image_batch`` at a time (attribution memory); each metric batches its
own forwards (its ``batch_size`` option).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens import __version__
from convlens.attribution.core import attribute, get_method
from convlens.attribution.targets import TargetLike
from convlens.engines import WorkerFactory, get_engine
from convlens.files import claim_output, finite_json, write_text_atomic
from convlens.io.datasets import scan_inputs
from convlens.metrics.core import Metric, MetricError, Scores, get_metric, resolve, unwrap
from convlens.metrics.display import evaluation_page, notebook_html, save_evaluation
from convlens.models.classifier import Classifier, ModelLike
from convlens.progress import ProgressCallback, ProgressLike, emit, resolve_progress

DEFAULT_METRICS = ("deletion", "insertion")


@dataclass
class Summary:
    """One method's score on one metric, over the images.

    Attributes:
        method, metric: Names (``metric`` includes a preset: ``"deletion:xplique"``).
        mean: Mean over images with a defined score (None if none).
        low, high: Percentile-bootstrap 95 % interval of the mean.
        count: Images with a defined score; ``undefined``: images without, by reason.
        higher_is_better: The metric's direction.
        rank: 1 = best among the methods on this metric.
        settings_id: Hash of the settings behind the number (metric, preset and options,
            method and its options, layer, model, input shape, target rule): compare two
            numbers only when their ids are equal.
    """

    method: str
    metric: str
    mean: float | None
    low: float | None
    high: float | None
    count: int
    undefined: dict[str, int]
    higher_is_better: bool
    settings_id: str
    rank: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Evaluation:
    """The result of :func:`evaluate`.

    Attributes:
        methods: Method names, in the order given.
        metrics: Metric keys (``name`` or ``name:preset``), in the order given.
        images: One name per image.
        targets: The explained class per image (index) and ``target_labels`` its name.
        scores: ``(method, metric) -> Scores`` over all images.
        cards: ``metric -> card``: every parameter used.
        summaries: One :class:`Summary` per method and metric.
        errors: Image files that could not be read (``{"path", "reason"}``), when an engine
            read the files; they were skipped.
    """

    methods: list[str]
    metrics: list[str]
    images: list[str]
    targets: list[int]
    target_labels: list[str]
    scores: dict[tuple[str, str], Scores]
    cards: dict[str, dict[str, Any]]
    summaries: list[Summary] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    def summary(self, method: str, metric: str) -> Summary:
        for row in self.summaries:
            if row.method == method and row.metric == metric:
                return row
        raise KeyError(f"no result for method {method!r} and metric {metric!r}")

    def ranking(self, metric: str) -> list[Summary]:
        """The methods on ``metric``, best first (undefined scores last)."""
        rows = [r for r in self.summaries if r.metric == metric]
        return sorted(rows, key=lambda r: (r.rank is None, r.rank or 0))

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: summaries, cards, per-image scores, curves and stages."""
        results = []
        for (method, metric), s in self.scores.items():
            entry: dict[str, Any] = {
                "method": method, "metric": metric,
                "per_image": [None if not math.isfinite(v) else float(v) for v in s.values],
                "undefined": s.undefined,
            }
            if s.curves:
                entry["curve_x"] = [float(v) for v in s.curve_x]
                entry["curve_label"] = s.curve_label
                entry["curves"] = {k: v.tolist() for k, v in s.curves.items()}
            if s.stages:
                entry["stages"] = {k: [None if not math.isfinite(v) else float(v) for v in r]
                                   for k, r in s.stages.items()}
            results.append(entry)
        return {"methods": self.methods, "metrics": self.metrics, "images": self.images,
                "targets": self.targets, "target_labels": self.target_labels,
                "summary": [r.as_dict() for r in self.summaries], "cards": self.cards,
                "results": results, "errors": self.errors}

    def to_json(self, path: str | Path | None = None) -> str:
        """The JSON text of :meth:`to_dict` (non-finite numbers as ``null``); written
        atomically to ``path`` when given."""
        text = json.dumps(finite_json(self.to_dict()), indent=1, default=_jsonable,
                          allow_nan=False)
        if path is not None:
            write_text_atomic(path, text)
        return text

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``evaluation.json``, ``evaluation.html`` and the curve / stage figures.

        ``directory`` is claimed as an output folder (docs/architecture.md, "Output
        folders"): new, empty or convlens's; every file written atomically.
        """
        with claim_output(directory, what="convlens evaluate"):
            return save_evaluation(self, Path(directory))

    def html(self) -> str:
        """The self-contained evaluation page."""
        return evaluation_page(self)

    def _repr_html_(self) -> str:  # notebook display
        return notebook_html(self)

    def __repr__(self) -> str:
        return (f"Evaluation({len(self.methods)} methods x {len(self.metrics)} metrics on "
                f"{len(self.images)} images)")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def parse_metric(spec: str) -> tuple[Metric, str | None]:
    """``"deletion"`` or ``"deletion:xplique"`` -> (metric, preset)."""
    if not isinstance(spec, str) or not spec.strip():
        raise MetricError(f"a metric is a name like 'deletion' or 'deletion:xplique', got "
                          f"{spec!r}")
    name, _, preset = spec.strip().partition(":")
    metric = get_metric(name)
    if preset:
        metric.bind(preset=preset)  # validates the preset name
    return metric, preset or None


def bootstrap_interval(values: np.ndarray, resamples: int, seed: int
                       ) -> tuple[float | None, float | None, float | None]:
    """Mean and percentile-bootstrap 95 % interval over the finite values."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None, None
    mean = float(values.mean())
    if values.size == 1 or resamples <= 0:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    draws = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return mean, float(low), float(high)


def two_d_maps(method: str, a: torch.Tensor) -> torch.Tensor:
    """The map as presentation reads it: ``(N, 1, h, w)``, the method's
    :meth:`~convlens.attribution.registry.Method.to_map` (channels reduced, offset removed).

    Public so that the audit (:mod:`convlens.auditing.scoring`) scores exactly the maps
    ``evaluate`` scores."""
    return get_method(method).to_map(a).unsqueeze(1)


_two_d = two_d_maps


def _settings_id(card: Mapping[str, Any]) -> str:
    text = json.dumps(card, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _concat(parts: list[Scores]) -> Scores:
    first = parts[0]
    curves = {k: np.concatenate([p.curves[k] for p in parts]) for k in first.curves}
    stages = {k: np.concatenate([p.stages[k] for p in parts]) for k in first.stages}
    return Scores(metric=first.metric, values=np.concatenate([p.values for p in parts]),
                  undefined=[u for p in parts for u in p.undefined], curves=curves,
                  curve_x=first.curve_x, curve_label=first.curve_label, stages=stages,
                  options=first.options)


@dataclass
class Request:
    """What :func:`evaluate` was asked, validated: methods, metrics with bound options."""

    methods: list[str]
    metrics: list[str]
    parsed: dict[str, tuple[Metric, str | None]]
    bound: dict[str, dict[str, Any]]
    method_options: dict[str, dict[str, Any]]
    layer: Any
    target: TargetLike


def score_images(module: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor,
                 request: Request) -> dict[tuple[str, str], Scores]:
    """Every method's maps of ``x`` for ``classes``, scored by every metric: one batch."""
    out: dict[tuple[str, str], Scores] = {}
    for method in request.methods:
        options = request.method_options.get(method, {})
        raw = attribute(module, x, method, target=classes, layer=request.layer, **options)
        two_d = _two_d(method, raw)
        for key, (metric, _preset) in request.parsed.items():
            opts = request.bound[key]
            if metric.needs == "method":
                out[(method, key)] = metric.compute(module, x, method, classes,
                                                    layer=request.layer,
                                                    method_options=options, maps=raw, **opts)
            else:
                out[(method, key)] = metric.compute(module, x, raw if metric.raw_maps else two_d,
                                                    classes, **opts)
    return out


def evaluate_batch(classifier: Classifier, batch: Any, *, request: Request) -> dict[str, Any]:
    """:func:`evaluate`'s per-batch work on an engine (:class:`convlens.engines.WorkerFactory`):
    the batch's classes, its per-method, per-metric :class:`Scores` and the device used."""
    module, labels = unwrap(classifier)
    x = batch.x.to(getattr(classifier, "device", "cpu"))
    _, classes = resolve(module, x, request.target, labels)
    return {"classes": classes.cpu(), "scores": score_images(module, x, classes, request),
            "device": str(x.device)}


def evaluate(classifier: ModelLike, images: Any, methods: Sequence[str] = ("gradcam", "saliency"),
             metrics: Sequence[str] = DEFAULT_METRICS, target: TargetLike = None, *,
             layer: Any = None, method_options: Mapping[str, Mapping[str, Any]] | None = None,
             metric_options: Mapping[str, Mapping[str, Any]] | None = None,
             image_batch: int = 16, bootstrap: int = 1000, seed: int = 0,
             names: Sequence[str] | None = None,
             progress: ProgressLike = None,
             engine: Any = None, engine_options: Mapping[str, Any] | None = None
             ) -> Evaluation:
    """Score attribution methods with metrics on a model and images, and rank them.

    Args:
        classifier: A :class:`convlens.Classifier` (or an ``nn.Module`` with ``images`` a
            preprocessed tensor).
        images: Paths, PIL images or arrays (preprocessed by the classifier), or a
            preprocessed tensor ``(N, C, H, W)``. With an ``engine``: image files and
            folders (walked recursively), streamed ``image_batch`` at a time.
        methods: Attribution method names (see :func:`convlens.methods`).
        metrics: Metric names, optionally with a preset: ``"deletion:xplique"`` (see
            :func:`convlens.metrics.metrics`).
        target: ``None`` (each image's prediction), an index, one per image, or a class name.
            With an engine: ``None``, an index or a class name.
        layer: Layer for layer-space methods.
        method_options: ``{method: {option: value}}``.
        metric_options: ``{metric key: {option: value}}`` (key as given in ``metrics``).
        image_batch: Images attributed and scored at a time.
        bootstrap: Bootstrap resamples for the 95 % intervals (0: none).
        seed: Seed of the bootstrap.
        names: One name per image (default: file names, or ``image 0``...); not with an
            engine (names are the paths).
        progress: A callback given an ``evaluate`` :class:`~convlens.progress.ProgressEvent`
            after each batch (``done``/``total`` in images, the batch's means as the
            message), ``True`` (plain lines, or a bar in a notebook), ``False``/None for
            silence (see :func:`convlens.progress.resolve_progress`).
        engine: None (everything in memory, in this process), ``"local"`` (files decoded
            in batches, unreadable files recorded in ``errors``), ``"ray"`` (the same on
            Ray Data: parallel decoding, an actor pool with one model copy each; ``pip
            install 'convlens[ray]'``) or an engine object (:mod:`convlens.engines`). The
            local and Ray engines give identical results.
        engine_options: Options of the engine (``workers`` for local; ``address``,
            ``actors``, ``cpus_per_actor``, ``gpus_per_actor`` for Ray).

    Returns:
        An :class:`Evaluation` (``.summaries``, ``.ranking(metric)``, ``.save(dir)``, HTML
        display in notebooks).
    """
    request = _request(methods, metrics, target, layer, method_options, metric_options)
    if not isinstance(image_batch, int) or image_batch < 1:
        raise MetricError(f"image_batch must be a positive integer, got {image_batch!r}")
    callback = resolve_progress(progress)
    if engine is None:
        x, image_names = _inputs(classifier, images, names)
        module, labels = unwrap(classifier)
        _, classes = resolve(module, x, target, labels) if x.shape[0] else (None, None)
        parts: dict[tuple[str, str], list[Scores]] = {}
        emit(callback, "evaluate", 0, x.shape[0])
        for first in range(0, x.shape[0], image_batch):
            xb = x[first:first + image_batch]
            cb = classes[first:first + image_batch]
            batch_scores = score_images(module, xb, cb, request)
            for k, scores in batch_scores.items():
                parts.setdefault(k, []).append(scores)
            emit(callback, "evaluate", first + xb.shape[0], x.shape[0], _means(batch_scores))
        scores = {k: _concat(v) for k, v in parts.items()}
        shape, device, errors = list(x.shape[1:]), str(x.device), []
        class_list = [int(c) for c in classes] if classes is not None else []
    else:
        if names is not None:
            raise MetricError("names are the image paths when an engine runs the evaluation; "
                              "leave names out")
        scores, class_list, image_names, errors, device = _run_on_engine(
            classifier, images, request, image_batch, engine, engine_options, callback)
        module, labels = unwrap(classifier)
        shape = list(classifier.sample_shape)
    cards = {key: _card(classifier, module, shape, len(image_names), device, key,
                        request.parsed[key], request.bound[key], request.methods,
                        request.method_options, layer, target, bootstrap)
             for key in request.metrics}

    def label(i: int) -> str:
        return labels[i] if labels is not None and 0 <= i < len(labels) else f"class {i}"

    result = Evaluation(methods=request.methods, metrics=request.metrics, images=image_names,
                        targets=class_list, target_labels=[label(c) for c in class_list],
                        scores=scores, cards=cards, errors=errors)
    for key in request.metrics:
        metric = request.parsed[key][0]
        rows = []
        for method in request.methods:
            s = scores[(method, key)]
            mean, low, high = bootstrap_interval(s.values, bootstrap, seed)
            reasons: dict[str, int] = {}
            for reason in s.undefined:
                if reason is not None:
                    reasons[reason] = reasons.get(reason, 0) + 1
            rows.append(Summary(method=method, metric=key, mean=mean, low=low, high=high,
                                count=int(np.isfinite(s.values).sum()), undefined=reasons,
                                higher_is_better=metric.higher_is_better,
                                settings_id=_row_id(cards[key], method)))
        ranked = sorted((r for r in rows if r.mean is not None),
                        key=lambda r: -r.mean if r.higher_is_better else r.mean)
        for position, row in enumerate(ranked, 1):
            row.rank = position
        result.summaries += rows
    return result


def _request(methods: Sequence[str] | str, metrics: Sequence[str] | str, target: TargetLike,
             layer: Any, method_options: Mapping[str, Mapping[str, Any]] | None,
             metric_options: Mapping[str, Mapping[str, Any]] | None) -> Request:
    """Validate names and bind options before any image is read."""
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(metrics, str):
        metrics = [metrics]
    methods, metrics = list(methods), list(metrics)
    if not methods or not metrics:
        raise MetricError("evaluate needs at least one method and one metric; see "
                          "convlens.methods() and convlens.metrics.metrics()")
    for method in methods:
        get_method(method)
    options = {k: dict(v) for k, v in (method_options or {}).items()}
    for method, opts in options.items():
        get_method(method).bind(opts)
    parsed = {key: parse_metric(key) for key in metrics}
    metric_options = dict(metric_options or {})
    unknown = [k for k in metric_options if k not in parsed]
    if unknown:
        raise MetricError(f"options given for metric {unknown[0]!r}, which is not among the "
                          f"requested metrics {metrics}")
    bound = {key: m.bind(metric_options.get(key), preset) for key, (m, preset) in
             parsed.items()}
    return Request(methods, metrics, parsed, bound, options, layer, target)


def _run_on_engine(classifier: ModelLike, images: Any, request: Request, image_batch: int,
                   engine: Any, engine_options: Mapping[str, Any] | None,
                   callback: ProgressCallback | None
                   ) -> tuple[dict[tuple[str, str], Scores], list[int], list[str],
                              list[dict[str, str]], str]:
    """Stream image files through an engine; per-unit results put back in file order."""
    if not hasattr(classifier, "preprocessing"):
        raise MetricError("an engine decodes image files with the classifier's "
                          "preprocessing: pass a convlens.Classifier")
    if isinstance(request.target, (list, tuple, torch.Tensor, np.ndarray)) or callable(
            request.target):
        raise MetricError("with an engine, target is None (each image's prediction), one "
                          "class index or one class name")
    paths = [images] if isinstance(images, (str, Path)) else list(images)
    if not all(isinstance(p, (str, Path)) for p in paths):
        raise MetricError("with an engine, images are image files or folders (paths); pass "
                          "tensors or pictures without an engine")
    dataset = scan_inputs(paths)
    runner = get_engine(engine, **dict(engine_options or {}))
    units: dict[int, Any] = {}

    def record(problem: Any) -> dict[str, str]:
        return {"path": str(problem.path), "reason": problem.reason}

    errors = [record(p) for p in dataset.problems]
    total, seen = len(dataset.entries), 0
    emit(callback, "evaluate", 0, total)
    for done in runner.map_units(dataset.entries, classifier.preprocessing,
                                 WorkerFactory(evaluate_batch, classifier, request=request),
                                 batch_size=image_batch):
        errors += [record(p) for p in done.batch.problems]
        if done.result is not None:
            units[done.unit] = (done.batch, done.result)
        seen += done.batch.size
        emit(callback, "evaluate", seen, total,
             _means(done.result["scores"]) if done.result is not None
             else f"{len(done.batch.problems)} unreadable")
    if not units:
        raise MetricError("no readable image among the inputs"
                          + (f": {errors[0]['path']}: {errors[0]['reason']}" if errors else ""))
    ordered = [units[u] for u in sorted(units)]
    scores = {k: _concat([result["scores"][k] for _, result in ordered])
              for k in ordered[0][1]["scores"]}
    classes = [int(c) for _, result in ordered for c in result["classes"]]
    names = [item.relpath for batch, _ in ordered for item in batch.items]
    return scores, classes, names, sorted(errors, key=lambda e: e["path"]), ordered[0][1][
        "device"]


def _means(scores: Mapping[tuple[str, str], Scores]) -> str:
    """One batch's means for a progress line: ``gradcam / deletion: mean 0.1234, ...``."""
    return ", ".join(f"{m} / {k}: mean {_fmt(s.mean)}" for (m, k), s in scores.items())


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _inputs(classifier: ModelLike, images: Any, names: Sequence[str] | None
            ) -> tuple[torch.Tensor, list[str]]:
    if isinstance(images, torch.Tensor):
        x = images
        default = [f"image {i}" for i in range(x.shape[0])] if x.dim() == 4 else []
    else:
        if not hasattr(classifier, "preprocess"):
            raise MetricError("images given as files or pictures need a convlens.Classifier to "
                              "preprocess them; wrap the model (convlens.Classifier(module, "
                              "...)) or pass a preprocessed tensor")
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        x = classifier.preprocess(items)
        default = [Path(i).name if isinstance(i, (str, Path)) else f"image {n}"
                   for n, i in enumerate(items)]
    if names is not None:
        names = list(names)
        if len(names) != len(default):
            raise MetricError(f"{len(names)} names given for {len(default)} images")
        return x, names
    return x, default


def _card(classifier: ModelLike, module: torch.nn.Module, input_shape: list[int], count: int,
          device: str, key: str,
          parsed: tuple[Metric, str | None], options: dict[str, Any], methods: list[str],
          method_options: dict[str, dict[str, Any]], layer: Any, target: TargetLike,
          bootstrap: int) -> dict[str, Any]:
    metric, preset = parsed
    card = {
        "metric": metric.name, "preset": preset, "family": metric.family,
        "options": json.loads(json.dumps(options, default=_jsonable)),
        "reference": metric.reference, "higher_is_better": metric.higher_is_better,
        "methods": {m: {**get_method(m).options, **method_options.get(m, {})} for m in methods},
        "layer": None if layer is None else str(layer),
        "model": getattr(classifier, "name", None) or type(module).__name__,
        "input_shape": [int(v) for v in input_shape], "images": int(count),
        "target": "prediction" if target is None else str(target),
        "bootstrap": {"resamples": bootstrap, "interval": "percentile 95%"},
        "convlens": __version__, "torch": torch.__version__, "device": device,
    }
    card["methods"] = json.loads(json.dumps(card["methods"], default=_jsonable))
    return card


# What makes two numbers comparable: not the image count, device or versions.
_SETTINGS = ("metric", "preset", "options", "layer", "model", "input_shape", "target")


def _row_id(card: Mapping[str, Any], method: str) -> str:
    """Hash of the settings behind one method's score on one metric."""
    return _settings_id({**{k: card[k] for k in _SETTINGS}, "method": method,
                         "method_options": card["methods"][method]})
