"""Metric scores in the audit: per image in the pass, per class and cluster in ``audit.json``.

Only maps-based metrics (``Metric.needs == "maps"``: deletion, insertion, ROAD, faithfulness
correlation, MuFidelity, infidelity, complexity, sparseness) are accepted. They score the
full-resolution map of the predicted class that the pass computes anyway (before it is
downsized for storage), on the same preprocessed batch, so they add their own forwards and
nothing else. Method-based metrics (max-sensitivity, model-parameter randomisation, random
logit) re-run the attribution method many times per image; over a whole dataset that is the
cost of many audits, so the audit refuses them with the list of accepted ones (run them with
``convlens evaluate`` on a sample instead). See docs/architecture.md, "Audit".

Scores are stored per image in the pass's records (``record["metrics"]``: the value or None
where undefined), and the metric keys with their bound options are part of the store's
configuration, so a resumed run never mixes scores of other settings. Aggregation reuses
:func:`convlens.metrics.evaluate.bootstrap_interval` (mean and percentile-bootstrap 95 %).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens import __version__
from convlens.metrics.core import Metric, MetricError, metrics
from convlens.metrics.evaluate import bootstrap_interval, parse_metric, two_d_maps

BOOTSTRAP = 1000


@dataclass(frozen=True)
class AuditMetric:
    """One requested metric: its key as typed (``name`` or ``name:preset``), bound options."""

    key: str
    metric: Metric
    preset: str | None
    options: dict[str, Any]


def accepted_metrics() -> list[str]:
    """Names of the metrics the audit accepts (maps-based)."""
    return [m.name for m in metrics() if m.needs == "maps"]


def parse_audit_metrics(specs: Sequence[str] | str | None,
                        options: Mapping[str, Mapping[str, Any]] | None = None
                        ) -> list[AuditMetric]:
    """Validate ``specs`` (``"deletion"``, ``"insertion:xplique"``) and bind their options.

    Raises:
        MetricError: An unknown metric, preset or option; a method-based metric; options
            given for a metric that was not requested.
    """
    if specs is None:
        specs = []
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    keys = [s.strip() for s in specs]
    if len(set(keys)) != len(keys):
        raise MetricError(f"a metric is listed twice in {keys}")
    options = {k: dict(v) for k, v in (options or {}).items()}
    unknown = [k for k in options if k not in keys]
    if unknown:
        raise MetricError(f"options given for metric {unknown[0]!r}, which is not among the "
                          f"requested metrics {keys}")
    parsed = []
    for key in keys:
        metric, preset = parse_metric(key)
        if metric.needs != "maps":
            raise MetricError(
                f"the audit does not run {metric.name!r}: it re-runs the attribution method "
                f"many times per image, too costly over a whole dataset. The audit accepts "
                f"the maps-based metrics: {', '.join(accepted_metrics())}. Score "
                f"{metric.name!r} on a sample with `convlens evaluate`")
        bound = json.loads(json.dumps(metric.bind(options.get(key), preset), default=str))
        parsed.append(AuditMetric(key, metric, preset, bound))
    return parsed


def config_entry(chosen: Sequence[AuditMetric]) -> dict[str, dict[str, Any]]:
    """What enters the store's configuration: key -> bound options."""
    return {m.key: m.options for m in chosen}


def score_batch(module: nn.Module, x: torch.Tensor, raw: torch.Tensor, method: str,
                predicted: torch.Tensor, chosen: Sequence[AuditMetric]
                ) -> list[dict[str, float | None]]:
    """Per image ``{key: score or None}`` for the predicted class's full-resolution maps."""
    if not chosen:
        return [{} for _ in range(x.shape[0])]
    two_d = two_d_maps(method, raw)
    target = predicted.to(x.device)
    rows: list[dict[str, float | None]] = [{} for _ in range(x.shape[0])]
    for m in chosen:
        maps = raw if m.metric.raw_maps else two_d
        scores = m.metric.compute(module, x, maps, target, **m.options)
        for row, value in enumerate(scores.values):
            rows[row][m.key] = round(float(value), 6) if math.isfinite(value) else None
    return rows


def card(m: AuditMetric, *, method: str, layer: str | None, model: str,
         images: int) -> dict[str, Any]:
    """What a number means and every setting behind it (like ``evaluate``'s card)."""
    return {"metric": m.metric.name, "preset": m.preset, "family": m.metric.family,
            "options": m.options, "reference": m.metric.reference,
            "summary": m.metric.summary, "higher_is_better": m.metric.higher_is_better,
            "method": method, "layer": layer, "model": model,
            "target": "prediction (full-resolution map of the predicted class)",
            "images": images, "sample": "every image",
            "bootstrap": {"resamples": BOOTSTRAP, "interval": "percentile 95%"},
            "convlens": __version__}


def values_of(records: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """The stored scores of ``key`` (NaN where undefined or missing)."""
    return np.array([np.nan if (r.get("metrics") or {}).get(key) is None
                     else float(r["metrics"][key]) for r in records], dtype=np.float64)


def mean_of(records: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = values_of(records, key)
    values = values[np.isfinite(values)]
    return round(float(values.mean()), 6) if values.size else None


def summary(records: Sequence[Mapping[str, Any]], key: str, seed: int) -> dict[str, Any]:
    """Mean, bootstrap 95 % interval and counts over ``records``."""
    values = values_of(records, key)
    mean, low, high = bootstrap_interval(values, BOOTSTRAP, seed)

    def r(v: float | None) -> float | None:
        return None if v is None else round(float(v), 6)

    count = int(np.isfinite(values).sum())
    return {"mean": r(mean), "ci": [r(low), r(high)], "count": count,
            "undefined": int(values.size - count)}
