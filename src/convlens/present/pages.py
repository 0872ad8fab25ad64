"""The HTML page of explanations, one template for the demo and for ``convlens explain``.

``present/templates/page.html.j2`` (Jinja2, autoescaped) renders a header (model, methods,
target, layer, normalisation...), then one section per photo and target: the predictions,
any notes, and per method family one figure per method with a colour bar of raw values and
a line saying how the image was made. Pixel-level methods show the map alone beside a
dimmed overlay (:mod:`convlens.present.views`).

Two ways to reference images:

* the demo embeds them as data URIs: one self-contained file for a handful of photos;
* :func:`write_explain_page` references the PNGs the job wrote, relative to the output
  folder, loaded lazily (``loading="lazy"``), ``per_page`` photos a page
  (``index.html``, ``index-2.html``...), so a run over thousands of photos gives pages a
  browser opens at once.

A Content-Security-Policy meta tag allows images only from the page's own origin and data
URIs, and inline styles; no scripts, no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from convlens.attribution.registry import get_method
from convlens.errors import ConvlensError
from convlens.files import ensure_folder, remove_written, write_text_atomic
from convlens.present.figures import DEFAULT_CMAP
from convlens.present.heatmap import display_percentile
from convlens.present.html import render_page
from convlens.present.views import PIXEL_CMAP, colorbar, is_pixel_level

TEMPLATE = "page.html.j2"
CSP = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")
PER_PAGE = 50


def method_info(method: str) -> dict[str, Any]:
    """Family, space, paper and default options of a registered method (blanks if unknown)."""
    try:
        spec = get_method(method)
    except ConvlensError:
        return {"family": "other", "space": "", "reference": "", "options": {}}
    return {"family": spec.family, "space": spec.space, "reference": spec.reference,
            "options": dict(spec.options)}


def describe_options(options: dict[str, Any]) -> str:
    """``steps=16, batch_size=64``: how a method was run, for the page."""
    return ", ".join(f"{key}={value}" for key, value in options.items())


def panel(method: str, *, overlay: str | None, scale: float | None, empty: bool,
          map_src: str | None = None, sign: str = "positive", normalize: str = "image",
          target: str | None = None, how: str = "", cmap: str | None = None
          ) -> dict[str, Any]:
    """One method's figure: image sources, colour bar and the line saying how it was made.

    Args:
        method: The method name.
        overlay: Source (relative URL or data URI) of the overlay, or ``None`` if missing.
        scale: Raw value mapped to the top colour.
        empty: The map is constant.
        map_src: Source of the map alone (pixel-level methods), if written.
        sign, normalize, target: For the colour bar's caption.
        how: Settings, time, layer: how the image was made.
        cmap: The images' colour map (default: :data:`~convlens.present.views.PIXEL_CMAP`
            when ``map_src`` is given, else the overlays' jet).
    """
    info = method_info(method)
    percentile = display_percentile(info["space"]) if info["space"] else 100.0
    return {
        "method": method, "family": info["family"], "reference": info["reference"],
        "overlay": overlay, "map": map_src, "empty": empty, "how": how,
        "pixel": is_pixel_level(method),
        "bar": colorbar(None if empty else scale, sign=sign, percentile=percentile,
                        normalize=normalize, target=target,
                        cmap=cmap or (PIXEL_CMAP if map_src else DEFAULT_CMAP)),
    }


def group_by_family(panels: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """``[(family, panels)]`` in the order the families first appear."""
    families: dict[str, list[dict[str, Any]]] = {}
    for item in panels:
        families.setdefault(item["family"], []).append(item)
    return list(families.items())


def render(context: dict[str, Any]) -> str:
    """Render the page template; ``context`` as built by the demo or the explain page.

    Keys: ``title``, ``header`` (``[(key, value)]``), ``notes``, ``samples`` (each with
    ``name``, ``heading``, ``predictions``, ``notes``, ``original``, ``families``),
    ``features`` (groups of items with ``src``, ``caption``, ``how``), ``errors``,
    ``pager`` (``None`` or ``{"index", "count", "previous", "next"}``), ``lazy``.
    """
    full = {"title": "convlens", "header": [], "notes": [], "samples": [], "features": [],
            "errors": [], "pager": None, "lazy": False, "csp": CSP, "intro": ""}
    full.update(context)
    return render_page(TEMPLATE, full)


def relative_src(name: str | None) -> str | None:
    """A file name under the output folder as a URL-quoted relative link, or ``None``.

    Names that would leave the folder (absolute, ``..``, a URL scheme, a backslash) are
    refused: the page would otherwise point wherever a record says.
    """
    if not name:
        return None
    text = str(name)
    parts = PurePosixPath(text).parts
    if (text.startswith(("/", "\\")) or "\\" in text or ":" in text or ".." in parts
            or not parts):
        return None
    return quote(text)


def _explain_sample(record: dict[str, Any], header: dict[str, Any]) -> dict[str, Any]:
    target = record.get("target") or {}
    label = target.get("label", "?")
    probability = target.get("probability")
    files = record.get("files") or {}
    views = record.get("views") or {}
    scales = record.get("scales") or {}
    empty = set(record.get("empty_maps") or [])
    methods = [m for m in (header.get("methods") or list(scales) or
                           [k for k in files if k not in ("grid", "input")])]
    options = header.get("options") or {}
    panels = []
    for method in methods:
        info = method_info(method)
        used = dict(info["options"])
        if isinstance(options.get(method), dict):  # {method: {option: value}}
            used.update(options[method])
        else:  # one flat {option: value} for every method that has the option
            used.update({k: v for k, v in options.items()
                         if not isinstance(v, dict) and k in used})
        bits = [describe_options(used)] if used else []
        if info["space"] == "layer" and header.get("layer"):
            bits.append(f"layer {header['layer']}")
        view = views.get(method) or {}
        overlay_name = view.get("overlay") or files.get(method)
        panels.append(panel(
            method, overlay=relative_src(overlay_name), map_src=relative_src(view.get("map")),
            scale=scales.get(method), empty=method in empty,
            sign=header.get("sign", "positive"), normalize=header.get("normalize", "image"),
            target=label, how="; ".join(bits)))
    heading = label if probability is None else f"{label} ({100 * probability:.1f}%)"
    return {
        "name": record.get("name") or Path(str(record.get("path", "?"))).stem,
        "heading": heading, "path": record.get("path"),
        "predictions": record.get("predictions") or [],
        "notes": [str(note) for note in record.get("notes") or []],
        "original": relative_src(files.get("input")),
        "grid": relative_src(files.get("grid")),
        "families": group_by_family(panels),
    }


def _header_rows(header: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, value in header.items():
        if key in ("errors", "options", "notes"):
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = describe_options(value)
        rows.append((str(key), "" if value is None else str(value)))
    options = header.get("options")
    if options:
        rows.append(("options", "; ".join(
            f"{k}: {describe_options(v) if isinstance(v, dict) else v}"
            for k, v in options.items())))
    return rows


def _page_name(index: int) -> str:
    return "index.html" if index == 1 else f"index-{index}.html"


def write_explain_page(out_dir: Path, header: dict[str, Any], records: list[dict[str, Any]],
                       *, per_page: int = PER_PAGE) -> Path:
    """Write the HTML page(s) of an explain run; returns ``out_dir/index.html``.

    Images are the PNGs already under ``out_dir`` (referenced, never embedded), loaded
    lazily; ``per_page`` records per page, linked by previous/next.

    Args:
        out_dir: The run's output folder (where the record's files are).
        header: ``model``, ``methods``, ``target``, ``layer``, ``normalize`` and anything
            else worth showing (``sign``, ``device``...); ``options`` (``{method: {...}}``,
            or one flat ``{option: value}`` for all) is merged with each method's defaults
            in its "how" line; ``errors`` (the bad
            files, ``[{path, error}]``) are listed on the first page.
        records: One per photo and target, as in ``results.json``: ``path``, ``name``,
            ``predictions`` ``[{label, probability}]``, ``target`` ``{index, label,
            probability}``, ``empty_maps``, ``scales`` ``{method: raw value mapped to 1}``,
            ``files`` ``{method: PNG, "grid": PNG}``; optionally ``notes`` (warnings) and
            ``views`` (``{method: {"map", "overlay"}}`` from
            :func:`convlens.present.views.save_readable_maps`).
        per_page: Records per HTML file.

    Returns:
        The first page.

    Raises:
        ConvlensError: ``per_page`` is not positive, or the folder cannot be written.
    """
    if per_page < 1:
        raise ConvlensError(f"per_page must be a positive number of records, got {per_page}")
    out_dir = Path(out_dir)
    ensure_folder(out_dir)
    header = dict(header)
    errors = list(header.get("errors") or [])
    count = max(1, -(-len(records) // per_page))
    rows = _header_rows(header)
    title = f"convlens explain: {header.get('model', 'model')}"
    for index in range(1, count + 1):
        chunk = records[(index - 1) * per_page:index * per_page]
        pager = None
        if count > 1:
            pager = {"index": index, "count": count,
                     "previous": _page_name(index - 1) if index > 1 else None,
                     "next": _page_name(index + 1) if index < count else None,
                     "first": (index - 1) * per_page + 1,
                     "last": (index - 1) * per_page + len(chunk), "total": len(records)}
        html = render({
            "title": title, "header": rows, "pager": pager, "lazy": True,
            "intro": f"{len(records)} explanation(s)",
            "errors": errors if index == 1 else [],
            "notes": [str(n) for n in header.get("notes") or []] if index == 1 else [],
            "samples": [_explain_sample(record, header) for record in chunk],
        })
        write_text_atomic(out_dir / _page_name(index), html)
    for stale in out_dir.glob("index-*.html"):  # pages of an earlier, longer run
        suffix = stale.stem.split("-", 1)[1]
        if suffix.isdigit() and int(suffix) > count:
            remove_written(stale)
    return out_dir / "index.html"
