"""The demo: the bundled model explains sample photos on one self-contained HTML page.

``make demo`` is the first thing a newcomer runs, so the default is sized to finish in well
under two CPU minutes after installation on a 2-core laptop, while still showing every
method family: two photos, a representative subset of methods (:data:`DEFAULT_METHODS`),
the n-pass ones at light settings (:data:`LIGHT_OPTIONS`, stated on the page), and the
feature visualizations precomputed at build time (converged, 256 steps; see
:func:`convlens.visualization.gallery.precomputed_gallery`). ``full=True``
(``convlens demo --full``) runs every registered method on all four photos with
:data:`FULL_OPTIONS` and renders the whole feature gallery live (many CPU minutes; the CLI
help states the measured cost). The page is :mod:`convlens.present.pages`'s template, the
same one ``convlens explain`` writes; every image on it says how it was made.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from convlens.attribution.core import get_method
from convlens.attribution.core import methods as registered
from convlens.errors import ConvlensError
from convlens.explanations import explain
from convlens.files import check_output, claim_output, save_image_atomic, write_text_atomic
from convlens.io.samples import SAMPLE_NAMES, sample_images
from convlens.models import loading
from convlens.models.classifier import Classifier
from convlens.preprocessing import coverage_mask
from convlens.present.html import data_uri
from convlens.present.pages import describe_options, group_by_family, method_info, panel, render
from convlens.present.views import dimmed_overlay, is_pixel_level, map_image
from convlens.progress import ProgressCallback, ProgressLike, emit, resolve_progress
from convlens.visualization.gallery import demo_gallery, precomputed_gallery

DEFAULT_SAMPLES = ("chelsea", "coffee")

DEFAULT_METHODS: tuple[str, ...] = (
    # gradient family: plain, path-integrated, noise-averaged, modified backward
    "saliency", "integrated_gradients", "smoothgrad", "guided_backprop",
    # CAMs: gradient-weighted (one shared pass) and gradient-free; Score-CAM and Ablation-CAM
    # (one forward per channel: 30 CPU s for two photos even on blocks.15) only with --full
    "gradcam", "layercam", "eigencam",
    # relevance propagation: the recommended composite and the plain epsilon rule
    "lrp", "lrp_epsilon",
    # perturbation
    "occlusion", "rise",
)
"""The default demo's methods: each family represented, the costly n-pass ones included."""

LIGHT_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 16},
    "smoothgrad": {"samples": 16},
    "occlusion": {"window": 48, "stride": 24},
    "rise": {"masks": 150},
}
"""Settings of the default demo's n-pass methods (library defaults stay paper-faithful)."""

FULL_OPTIONS: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 32, "stride": 16},
    "rise": {"masks": 250},
    "scorecam": {"layer": "blocks.15"},  # 320 channels instead of the head's 1280
    "integrated_gradients": {"steps": 25},
    "smoothgrad": {"samples": 25},
    "vargrad": {"samples": 25},
    "gradient_shap": {"samples": 25},
}
"""Settings of ``--full``: every method, still lighter than the papers' for the costliest."""


def build_demo(out: Path, *, methods: Sequence[str] | None = None, device: str = "auto",
               features: bool = True, full: bool = False,
               samples: Sequence[str] | None = None, progress: ProgressLike = None) -> Path:
    """Explain sample photos and write the self-contained page ``out/index.html``.

    Args:
        out: Output folder (created); also receives the overlay PNGs and the photos.
        methods: Method names (default: :data:`DEFAULT_METHODS`, or every method with
            ``full``).
        device: ``auto``, ``cpu``, ``cuda``...
        features: Include the feature-visualization section (precomputed by default,
            rendered live with ``full``).
        full: Every method, all four photos, :data:`FULL_OPTIONS`, live feature gallery.
        samples: Sample names (default two, or all four with ``full``).
        progress: A callback given an ``explain`` :class:`~convlens.progress.ProgressEvent`
            per method (``done``/``total`` in methods, the method now running as the
            message), ``True`` (plain lines, or a bar in a notebook), ``False``/None for
            silence. The demo never draws; ``convlens demo`` draws the events as a bar.

    Returns:
        The page's path.

    Raises:
        ConvlensError: An unknown method or sample name.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    callback = resolve_progress(progress)
    out = Path(out)
    check_output(out, option="--out")
    if methods:
        names = list(methods)
    else:
        names = [m.name for m in registered()] if full else list(DEFAULT_METHODS)
    for name in names:
        get_method(name)  # unknown names fail before any work
    chosen = list(samples) if samples else (list(SAMPLE_NAMES) if full else
                                            list(DEFAULT_SAMPLES))
    unknown = [s for s in chosen if s not in SAMPLE_NAMES]
    if unknown:
        raise ConvlensError(f"unknown sample(s) {unknown}; valid: {', '.join(SAMPLE_NAMES)}")
    options = FULL_OPTIONS if full else LIGHT_OPTIONS
    classifier = loading.load_model(device=device)  # by module: a test swaps in a tiny model
    with claim_output(out, what="convlens demo"):
        return _write_demo(out, classifier, chosen, names, options, full, features,
                           started, cpu_started, callback)


def _write_demo(out: Path, classifier: Classifier, chosen: list[str], names: list[str],
                options: Mapping[str, Mapping[str, Any]], full: bool, features: bool,
                started: float, cpu_started: float,
                progress: ProgressCallback | None = None) -> Path:
    """The demo's files, written into the claimed folder ``out``."""
    photos = sample_images()
    paths = [save_image_atomic(photos[sample], out / "samples" / f"{sample}.png")
             for sample in chosen]
    per_method, timings = _explain_each(classifier, paths, names, options, progress)
    sample_sections = [_sample_section(out, path, index, names, per_method, timings, options)
                       for index, path in enumerate(paths)]
    feature_groups = _feature_groups(classifier, out, full, progress) if features else []
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    header = [
        ("model", classifier.name),
        ("device", str(classifier.device)),
        ("photos", ", ".join(chosen)),
        ("methods", f"{len(names)}: " + ", ".join(names)),
        ("target", "each photo's predicted class (evidence for it: positive sign)"),
        ("normalisation", "per image: each map's scale is its own peak (99.5th percentile "
                          "for pixel-level maps); the colour bars give the raw values"),
        ("mode", "full (every method, all photos, live feature gallery)" if full else
         "default: a representative subset per family, light settings for the n-pass "
         "methods; `convlens demo --full` shows everything"),
        ("generated in", f"{wall:.0f} s wall, {cpu:.0f} s CPU (this process)"),
    ]
    page = out / "index.html"
    write_text_atomic(page, render({
        "title": "convlens demo", "header": header, "samples": sample_sections,
        "features": feature_groups,
    }))
    return page


def _explain_each(classifier: Classifier, paths: list[Path], names: list[str],
                  options: Mapping[str, Mapping[str, Any]],
                  progress: ProgressCallback | None = None
                  ) -> tuple[dict[str, list[Any]], dict[str, tuple[float, float]]]:
    """One explain() call per method, so each method's time can be shown on the page.

    Emits an ``explain`` event before each method (naming it) and one when all are done.
    """
    per_method: dict[str, list[Any]] = {}
    timings: dict[str, tuple[float, float]] = {}
    for done, name in enumerate(names):
        emit(progress, "explain", done, len(names), name)
        wall, cpu = time.perf_counter(), time.process_time()
        per_method[name] = explain(classifier, paths, [name], **options.get(name, {}))
        timings[name] = (time.perf_counter() - wall, time.process_time() - cpu)
    emit(progress, "explain", len(names), len(names), "all methods explained")
    return per_method, timings


def _sample_section(out: Path, path: Path, index: int, names: list[str],
                    per_method: dict[str, list[Any]], timings: dict[str, tuple[float, float]],
                    options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    count = len(per_method[names[0]])
    first = per_method[names[0]][index]
    panels = []
    for name in names:
        explanation = per_method[name][index]
        seen = coverage_mask(explanation.geometry)
        heat = explanation.heatmap(name)
        map_src = None
        if is_pixel_level(name):
            overlay = dimmed_overlay(explanation.image, heat, seen=seen)
            map_src = data_uri(map_image(heat, seen=seen), 400)
        else:
            overlay = explanation.overlay(name)
        save_image_atomic(overlay, out / f"{path.stem}.{name}.png")
        used = dict(method_info(name)["options"])
        used.update(options.get(name, {}))
        wall, cpu = timings[name]
        bits = [describe_options(used)] if used else []
        if method_info(name)["space"] == "layer":
            bits.append(f"layer {used.get('layer') or explanation.layer}")
        bits.append(f"{wall / count:.2f} s wall, {cpu / count:.2f} s CPU per photo")
        panels.append(panel(name, overlay=data_uri(overlay, 400), map_src=map_src,
                            scale=explanation.scales.get(name), empty=explanation.empty(name),
                            target=explanation.target_label, how="; ".join(bits)))
    return {
        "name": path.stem, "heading": f"{first.target_label} ({100 * first.probability:.1f}%)",
        "original": data_uri(first.image, 400),
        "predictions": [{"label": label, "probability": p} for label, p in first.predictions],
        "notes": [str(n) for n in getattr(first, "notes", None) or []],
        "families": group_by_family(panels),
    }


def _feature_groups(classifier: Classifier, out: Path, full: bool,
                    progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
    """The feature section: the committed set, or (``full``) the live gallery."""
    if full:
        records = demo_gallery(classifier, out / "features", progress=progress)
        made = "rendered live by `convlens demo --full`"
    else:
        records = precomputed_gallery()
        made = "precomputed by scripts/make_demo_features.py (checked by a test)"
    groups = []
    for record in records:
        items = [{"src": data_uri(Path(item["path"]), 256), "caption": item["caption"],
                  "how": feature_how(item["how"], made)} for item in record["items"]]
        groups.append({"title": record["title"], "caption": record.get("caption", ""),
                       "items": items})
    return groups


def feature_how(how: dict[str, Any], made: str = "") -> str:
    """One line saying how a feature image was made: objective, steps, settings, values."""
    settings = how.get("settings", {})
    reached, asked = how.get("steps_reached"), how.get("steps_requested")
    steps = f"{reached} steps"
    if reached != asked:
        steps = f"{reached} of {asked} steps (stopped early)"
    text = (f"{how.get('objective')}: {steps}, {settings.get('size')} px, "
            f"{settings.get('param', 'fft')} parameterisation, "
            f"{settings.get('transforms', 'standard')} transforms, "
            f"{settings.get('optimizer', 'Adam')} lr {settings.get('lr') or 'default'}, "
            f"seed {settings.get('seed')}")
    if how.get("objective_final") is not None:
        text += (f"; objective {how['objective_half']:.3g} at step {reached // 2}, "
                 f"{how['objective_final']:.3g} at the end")
    if how.get("seconds") is not None:
        text += f"; {how['seconds']:.0f} s wall to make"
    return text + (f"; {made}" if made else "")
