"""Presentation of an :class:`~convlens.metrics.evaluate.Evaluation`: figures (matplotlib),
the self-contained HTML page (``present/templates/evaluation.html.j2``), the notebook view
and the files written by ``Evaluation.save``. Nothing here runs the model.

``evaluate.py`` imports this module (its ``Evaluation.save`` / ``html`` call it); this module
reads an evaluation through the :class:`EvaluationView` protocol and never imports
``evaluate.py``, so the dependency runs one way.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from convlens.files import write_bytes_atomic, write_text_atomic
from convlens.metrics.core import Scores
from convlens.present.html import render_page


class SummaryView(Protocol):
    """What a ranking row shows of a :class:`~convlens.metrics.evaluate.Summary`."""

    method: str
    mean: float | None
    low: float | None
    high: float | None
    count: int
    undefined: dict[str, int]
    rank: int | None
    settings_id: str


class EvaluationView(Protocol):
    """What the figures, the page and the saved files read of an
    :class:`~convlens.metrics.evaluate.Evaluation`."""

    methods: list[str]
    metrics: list[str]
    images: list[str]
    target_labels: list[str]
    scores: dict[tuple[str, str], Scores]
    cards: dict[str, dict[str, Any]]

    def ranking(self, metric: str) -> Sequence[SummaryView]: ...

    def to_json(self, path: str | Path | None = None) -> str: ...


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def curve_figure(evaluation: EvaluationView, metric: str) -> Any | None:
    """Mean curve per method (one panel per curve kind) for deletion, insertion, ROAD."""
    scores = [evaluation.scores[(m, metric)] for m in evaluation.methods]
    if not scores or not scores[0].curves:
        return None
    plt = _pyplot()
    kinds = list(scores[0].curves)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.3), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for method, s in zip(evaluation.methods, scores):
            curve = s.curves[kind]
            keep = np.isfinite(s.values)
            mean = curve[keep].mean(0) if keep.any() else np.full(curve.shape[1], np.nan)
            ax.plot(s.curve_x, mean, marker="." if len(s.curve_x) < 30 else None, label=method)
        ax.set_title(f"{metric}: {kind}" if kind != metric else metric)
        ax.set_xlabel(scores[0].curve_label)
        ax.set_ylabel("accuracy" if kind.endswith("accuracy") else "class score")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def stage_figure(evaluation: EvaluationView, metric: str, method: str) -> Any | None:
    """Similarity to the trained model's map after each randomisation stage."""
    s = evaluation.scores[(method, metric)]
    if not s.stages:
        return None
    plt = _pyplot()
    names = list(s.stages)
    values = np.stack([s.stages[n] for n in names])  # (stages, images)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.42 * len(names) + 1.5), 3.2))
    positions = np.arange(len(names))
    for column in values.T:
        ax.plot(positions, column, color="0.75", lw=0.8)
    ax.plot(positions, np.nanmean(values, 1), color="C3", marker="o", lw=2, label="mean")
    ax.axhline(0.5, color="0.4", ls=":", lw=1)
    ax.set_xticks(positions, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel(s.options.get("similarity", "similarity"))
    ax.set_title(f"{method}: cascading randomisation")
    fig.tight_layout()
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    return buffer.getvalue()


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figures(evaluation: EvaluationView) -> list[tuple[str, str, bytes]]:
    """(file stem, caption, png) for every figure of the evaluation."""
    out = []
    for metric in evaluation.metrics:
        fig = curve_figure(evaluation, metric)
        if fig is not None:
            out.append((f"curves_{_safe(metric)}", f"{metric}: mean curve per method", _png(fig)))
        for method in evaluation.methods:
            fig = stage_figure(evaluation, metric, method)
            if fig is not None:
                out.append((f"{_safe(metric)}_{_safe(method)}", f"{metric}: {method}",
                            _png(fig)))
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _number(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _row(summary: SummaryView) -> dict[str, Any]:
    interval = ("-" if summary.low is None else f"[{summary.low:.3f}, {summary.high:.3f}]")
    undefined = "; ".join(f"{n} x {reason}" for reason, n in summary.undefined.items())
    return {"method": summary.method, "mean": _number(summary.mean), "interval": interval,
            "count": summary.count, "undefined": undefined, "rank": summary.rank or "-",
            "settings_id": summary.settings_id}


def stage_tables(evaluation: EvaluationView) -> list[dict[str, Any]]:
    """Per randomisation metric: stage names and one row of mean similarities per method."""
    tables = []
    for metric in evaluation.metrics:
        first = evaluation.scores[(evaluation.methods[0], metric)]
        if not first.stages:
            continue
        stages = list(first.stages)
        rows = [{"method": m, "cells": [_number(float(np.nanmean(evaluation.scores[(m, metric)]
                                                                 .stages[s])))
                                        for s in stages]}
                for m in evaluation.methods]
        tables.append({"metric": metric, "stages": stages, "rows": rows})
    return tables


def _context(evaluation: EvaluationView, figures: list[tuple[str, str, bytes]]) -> dict[str, Any]:
    metrics = []
    for metric in evaluation.metrics:
        card = evaluation.cards[metric]
        metrics.append({
            "key": metric, "reference": card["reference"],
            "direction": "higher is better" if card["higher_is_better"] else "lower is better",
            "rows": [_row(r) for r in evaluation.ranking(metric)],
            "card": json.dumps(card, indent=1),
        })
    return {"evaluation": evaluation, "metrics": metrics, "stage_tables": stage_tables(evaluation),
            "figures": [{"caption": c, "uri": _uri(p)} for _, c, p in figures],
            "images": list(zip(evaluation.images, evaluation.target_labels))}


def evaluation_page(evaluation: EvaluationView, figures: list | None = None) -> str:
    """The self-contained HTML page."""
    figures = _figures(evaluation) if figures is None else figures
    return render_page("evaluation.html.j2", _context(evaluation, figures))


def notebook_html(evaluation: EvaluationView) -> str:
    """Ranking tables and figures, for Jupyter."""
    context = _context(evaluation, _figures(evaluation))
    return render_page("evaluation.html.j2", {**context, "fragment": True})


def save_evaluation(evaluation: EvaluationView, directory: Path) -> list[Path]:
    """``evaluation.json``, ``evaluation.html`` and one PNG per figure under ``directory``."""
    figures = _figures(evaluation)
    written = [directory / "evaluation.json"]
    evaluation.to_json(written[0])
    for stem, _caption, png in figures:
        written.append(write_bytes_atomic(directory / f"{stem}.png", png))
    page = directory / "evaluation.html"
    write_text_atomic(page, evaluation_page(evaluation, figures))
    written.append(page)
    return written
