"""The demo page: every method on the bundled sample photos.

Batch jobs over image files moved to :mod:`convlens.jobs.explain_job` (``ExplainJob``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from convlens.models.classifier import Classifier

# Lighter settings for the demo page's costliest methods, so `make demo` finishes in minutes
# on a laptop CPU; the page shows the settings used. Library defaults stay paper-faithful.
DEMO_OPTIONS: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 32, "stride": 16},
    "rise": {"masks": 250},
    "scorecam": {"layer": "blocks.15"},  # 320 channels instead of the head's 1280
    "integrated_gradients": {"steps": 25},
    "smoothgrad": {"samples": 25},
    "vargrad": {"samples": 25},
    "gradient_shap": {"samples": 25},
}


def build_demo(out: Path, *, methods: Sequence[str] | None = None, device: str = "auto",
               features: bool = True) -> Path:
    """Explain the bundled sample photos with every method; write ``out/index.html``.

    The page is self-contained (images embedded), grouped by method family, with each
    method's paper and its time on this machine.
    """
    import time

    from convlens.attribution.core import get_method
    from convlens.attribution.core import methods as registered
    from convlens.explain import explain
    from convlens.io.samples import sample_paths
    from convlens.models.loading import load_model
    from convlens.present.html import data_uri, render_page

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classifier = load_model(device=device)
    names = list(methods) if methods else [m.name for m in registered()]
    paths = sample_paths(out / "samples")
    timings: dict[str, float] = {}
    per_method = {}
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("explaining the samples", total=len(names))
        for name in names:  # one call per method, so each gets its own time on the page
            bar.update(task, description=f"{name:>22}")
            begun = time.perf_counter()
            per_method[name] = explain(classifier, paths, [name], **DEMO_OPTIONS.get(name, {}))
            timings[name] = time.perf_counter() - begun
            bar.advance(task)
    samples = []
    for index, path in enumerate(paths):
        first = per_method[names[0]][index]
        families: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            explanation = per_method[name][index]
            overlay = explanation.overlay(name)
            overlay.save(out / f"{path.stem}.{name}.png")
            spec = get_method(name)
            families.setdefault(spec.family, []).append({
                "method": name, "uri": data_uri(overlay, 400), "empty": explanation.empty(name),
                "reference": spec.reference, "seconds": f"{timings[name] / len(paths):.2f}",
                "options": ", ".join(f"{k}={v}" for k, v in DEMO_OPTIONS.get(name, {}).items()),
            })
        samples.append({
            "name": path.stem, "target_label": first.target_label,
            "probability": first.probability, "original": data_uri(first.image, 400),
            "predictions": [{"label": label, "probability": p} for label, p in first.predictions],
            "families": list(families.items()),
        })
    feature_groups = _feature_section(classifier, out) if features else []
    page = out / "index.html"
    page.write_text(render_page("demo.html.j2", {
        "model": classifier.name, "methods": names, "samples": samples,
        "features": feature_groups, "device": str(classifier.device),
        "seconds": f"{time.perf_counter() - started:.0f}",
    }), encoding="utf-8")
    return page


def _feature_section(classifier: Classifier, out: Path) -> list[dict[str, Any]]:
    """Feature-visualization groups for the page (title, items with image URIs)."""
    from convlens.present.html import data_uri
    from convlens.visualization.gallery import demo_gallery

    groups = []
    for group in demo_gallery(classifier, out / "features"):
        items = [{"uri": data_uri(Path(item["path"]), 300), "caption": item["caption"]}
                 for item in group["items"]]
        groups.append({"title": group["title"], "items": items})
    return groups
