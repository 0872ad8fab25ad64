"""The audit's HTML report and its notebook view.

``OUT/report.html`` opens from the file system with no network: thumbnails, prototypes and
figures are files under ``OUT/report-files/`` (loaded lazily), never thousands of data URIs;
the page carries a Content-Security-Policy (no scripts, images only from its own folder)
and every file name goes through Jinja2's autoescaping. The report stays fast at 10,000
images because it shows a bounded number of examples (per cluster, per mistake pair, per
page of classes) and says how many more ``audit.json`` lists.

Full-size maps are recomputed, batched, for the images the report shows (the pass stores
only 32x32 maps), by the audit's engine (:func:`report_maps`: decoding and attribution
where the pass ran, on Ray in its actors); this process draws the thumbnails. This module
sits above the layers like :mod:`convlens.explanations` (docs/architecture.md, "Layers and
the direction data flows").
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from convlens.attribution.core import attribute, get_method
from convlens.attribution.crp import concept_maps
from convlens.concepts.patches import crop_patch, patch_boxes
from convlens.engines import WorkerFactory, get_engine
from convlens.errors import ConvlensError
from convlens.files import write_text_atomic
from convlens.models.classifier import Classifier
from convlens.present.audit_figures import (
    confusion_figure,
    eigenvalue_figure,
    overlay_thumbnail,
    patch_grid,
    prototype,
    thumbnail,
)
from convlens.present.audit_figures import unit as unit_scaled
from convlens.present.figures import colorize
from convlens.present.heatmap import apply_sign, upsample
from convlens.present.html import render_page
from convlens.progress import ProgressCallback, emit
from convlens.store import config_fingerprint


class AuditView(Protocol):
    """What the report reads of :class:`convlens.auditing.run.Audit`.

    A protocol, not an import, so that ``run.py`` imports this module and not the reverse (no
    import cycle: docs/architecture.md, "Layers and the direction data flows").
    """

    out: Path
    classifier: Classifier
    dataset: Any
    settings: Any
    engine: Any

    @property
    def data(self) -> dict[str, Any]:
        """The ``audit.json`` content."""

ASSETS = "report-files"
SUSPICIOUS = 5
PROTOTYPE_MEMBERS = 16
EXAMPLES = 6
CLASSES = 50
MISTAKE_PAIRS = 30
MISTAKE_EXAMPLES = 6
CONCEPT_STRATEGIES = 3
"""The strategies whose concepts the report draws (reference patches, conditional maps)."""
CONCEPTS_SHOWN = 3
CONCEPT_PROTOTYPES = 3


def _name(path: str, suffix: str) -> str:
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:16] + suffix


class _Maps:
    """Collects (image, class) pairs, then recomputes their full-size maps batch by batch."""

    def __init__(self, audit: AuditView) -> None:
        self.audit = audit
        self.wanted: dict[str, set[int]] = defaultdict(set)
        self.photos: set[str] = set()

    def want(self, path: str, target: int | None) -> str:
        if target is None:
            self.photos.add(path)
            return f"{ASSETS}/{_name(path, '.jpg')}"
        self.wanted[path].add(target)
        return f"{ASSETS}/{_name(path, f'-{target}.jpg')}"

    def render(self, folder: Path, batch_size: int, progress: ProgressCallback | None) -> int:
        """Thumbnails and map overlays of the wanted images; the maps are computed by the
        audit's engine (decoding and attribution there, the drawing here). Returns the
        number of images (the ``report`` stage's total)."""
        audit = self.audit
        classifier, settings = audit.classifier, audit.settings
        entries = {e.relpath: e for e in audit.dataset.entries}
        paths = sorted((set(self.wanted) | self.photos) & set(entries))
        emit(progress, "report", 0, len(paths))
        targets = [sorted(self.wanted.get(p, ())) for p in paths]
        factory = WorkerFactory(report_maps, classifier, method=settings.method,
                                layer=settings.layer, options=dict(settings.options),
                                targets=targets)
        engine = audit.engine or get_engine("local", workers=settings.workers)
        done = 0
        for unit in engine.map_units([entries[p] for p in paths], classifier.preprocessing,
                                     factory, batch_size=batch_size):
            batch = unit.batch
            maps = {(index, target): heat for index, target, heat in unit.result or ()}
            for position, item in enumerate(batch.items):
                image = batch.image(position)  # decoded again here: only what is shown
                if item.relpath in self.photos:
                    thumbnail(image, folder / _name(item.relpath, ".jpg"))
                wanted = targets[item.index]
                if wanted:
                    view = classifier.preprocessing.resize_image(image)[0]
                    for target in wanted:
                        overlay_thumbnail(view, maps[item.index, target],
                                          folder / _name(item.relpath, f"-{target}.jpg"))
            done += batch.size
            emit(progress, "report", done, len(paths))
        return len(paths)


def report_maps(classifier: Classifier, batch: Any, *, method: str, layer: str | None,
                options: dict[str, Any], targets: list[list[int]]
                ) -> list[tuple[int, int, np.ndarray]]:
    """The report's per-batch map work on an engine (:class:`convlens.engines.WorkerFactory`):
    full-size positive maps of the wanted classes, ``targets[i]`` for entry ``i``, as
    ``(entry index, target, map (H, W) float32)`` for every wanted pair of the batch."""
    spec = get_method(method)
    pairs = [(position, target) for position, item in enumerate(batch.items)
             for target in targets[item.index]]
    if not pairs:
        return []
    x = batch.x[[p for p, _ in pairs]].to(classifier.device)
    raw = attribute(classifier, x, spec.name, target=torch.tensor([t for _, t in pairs]),
                    layer=layer if spec.needs_layer else None, **options)
    maps = apply_sign(spec.to_map(raw), "positive")
    maps = upsample(maps, tuple(x.shape[-2:])).cpu().numpy()
    return [(batch.items[p].index, t, maps[k]) for k, (p, t) in enumerate(pairs)]


def concept_figures(classifier: Classifier, batch: Any, *, layer: str, rule: str, grid: list[int],
                    requests: list[list[tuple[str, int, int | None]]]
                    ) -> list[tuple[int, str, int, int | None, Any]]:
    """The report's per-batch concept work on an engine
    (:class:`convlens.engines.WorkerFactory`): per entry ``i``, ``requests[i]`` is a list of
    ``("patch", channel, flat position)`` (the reference patch's box,
    :func:`convlens.concepts.patches.patch_boxes`) and ``("map", channel, None)`` (the CRP
    map conditioned on the channel, :func:`convlens.concept_maps`, explaining the predicted
    class). Returns ``(entry index, kind, channel, position, box or map (H, W) float32)``."""
    width = grid[1] if grid and len(grid) > 1 else 1
    out: list[tuple[int, str, int, int | None, Any]] = []
    for position, item in enumerate(batch.items):
        wanted = requests[item.index]
        x = batch.x[position:position + 1].to(classifier.device)
        patches = [(c, at) for kind, c, at in wanted if kind == "patch"]
        if patches:
            found = patch_boxes(classifier, x, layer,
                                [(c, divmod(int(at), width), "relevance") for c, at in patches],
                                rule=rule)
            out.extend((item.index, "patch", c, at, patch.box)
                       for (c, at), patch in zip(patches, found))
        channels = [c for kind, c, _ in wanted if kind == "map"]
        if channels:
            maps = concept_maps(classifier, x, layer, channels=channels,
                                rule=rule).maps[0].float().cpu().numpy()
            out.extend((item.index, "map", c, None, maps[k]) for k, c in enumerate(channels))
    return out


def _clipped(heat: np.ndarray, quantile: float = 99.0) -> np.ndarray:
    """A pixel-level CRP map's positive part clipped at its ``quantile`` (of the positive
    pixels): a handful of extreme pixels would otherwise set the colour scale and leave the
    region the channel looks at invisible."""
    positive = np.maximum(np.asarray(heat, dtype=np.float64), 0.0)
    inside = positive[positive > 0]
    if not inside.size:
        return positive
    return np.minimum(positive, np.percentile(inside, quantile))


def concept_blocks(audit: AuditView, strategies: list[dict], folder: Path, batch_size: int,
                   progress: ProgressCallback | None) -> dict[int, dict[str, Any]]:
    """Per shown strategy with concepts (the first :data:`CONCEPT_STRATEGIES`): its words,
    and per concept (the first :data:`CONCEPTS_SHOWN`) a grid of its reference patches (the
    audit's own images, cropped around the recorded hottest position) and its conditional
    maps (CRP, LRP where the model has rules) on the strategy's first prototype images.
    Computed by the audit's engine for these few images only; drawn here."""
    data = audit.data
    header = data.get("concepts") or {}
    chosen = [s for s in strategies if s.get("concepts")][:CONCEPT_STRATEGIES]
    if not chosen or not header.get("layer"):
        return {}
    classifier = audit.classifier
    entries = {e.relpath: e for e in audit.dataset.entries}
    wanted: dict[str, set[tuple[str, int, int | None]]] = defaultdict(set)
    for s in chosen:
        for concept in s["concepts"][:CONCEPTS_SHOWN]:
            for ref in concept["references"]:
                wanted[ref["path"]].add(("patch", concept["channel"], ref["position"]))
            for member in s["members"][:CONCEPT_PROTOTYPES]:
                wanted[member].add(("map", concept["channel"], None))
    paths = sorted(set(wanted) & set(entries))
    # The maps and patch boxes use CRP's own rule ("auto": LRP where the model has rules):
    # the channel is the one the recorded relevances ranked; conditioned input x gradient
    # (the free path's rule) is a few speckled pixels on a real network, LRP shows the region.
    factory = WorkerFactory(concept_figures, classifier, layer=header["layer"], rule="auto",
                            grid=list(header.get("grid") or []),
                            requests=[sorted(wanted[p]) for p in paths])
    engine = audit.engine or get_engine("local", workers=audit.settings.workers)
    patches: dict[tuple[str, int, int], Image.Image] = {}
    views: dict[tuple[str, int], str] = {}
    emit(progress, "concepts", 0, len(paths))
    done = 0
    for unit in engine.map_units([entries[p] for p in paths], classifier.preprocessing,
                                 factory, batch_size=batch_size):
        batch = unit.batch
        results = unit.result or []
        for position, item in enumerate(batch.items):
            mine = [r for r in results if r[0] == item.index]
            if not mine:
                continue
            photo = batch.image(position).convert("RGB")
            view, geometry = classifier.preprocessing.resize_image(photo)
            for _index, kind, channel, at, value in mine:
                if kind == "patch":
                    patches[item.relpath, channel, at] = crop_patch(
                        photo, geometry, value, classifier.preprocessing.input_size)
                else:
                    name = _name(item.relpath, f"-concept-{channel}.jpg")
                    overlay_thumbnail(view, _clipped(value), folder / name)
                    views[item.relpath, channel] = f"{ASSETS}/{name}"
        done += batch.size
        emit(progress, "concepts", done, len(paths))
    blocks: dict[int, dict[str, Any]] = {}
    for s in chosen:
        shown = []
        for concept in s["concepts"][:CONCEPTS_SHOWN]:
            crops = [patches[r["path"], concept["channel"], r["position"]]
                     for r in concept["references"]
                     if (r["path"], concept["channel"], r["position"]) in patches]
            grid = None
            if crops:
                name = f"concept-{s['id']}-{concept['channel']}.png"
                patch_grid(crops, folder / name)
                grid = f"{ASSETS}/{name}"
            shown.append({**concept, "patches": grid,
                          "maps": [{"path": m, "src": views[m, concept["channel"]]}
                                   for m in s["members"][:CONCEPT_PROTOTYPES]
                                   if (m, concept["channel"]) in views]})
        blocks[s["id"]] = {"words": s.get("concept_words") or "", "concepts": shown,
                           "layer": header["layer"], "rule": header.get("rule")}
    return blocks


def write_report(audit: AuditView, target: Path, *, progress: ProgressCallback | None = None,
                 batch_size: int | None = None) -> Path:
    """Write ``target`` (HTML) and its files under ``target.parent / report-files``."""
    if audit.classifier is None or audit.dataset is None or audit.settings is None:
        raise ConvlensError("this Audit has no classifier and dataset attached; run "
                            "cl.audit(classifier, data, ...) to write a report")
    data = audit.data
    source = config_fingerprint(data)
    stamp = f'<meta name="convlens-audit" content="{source}">'
    if target.is_file() and stamp in target.read_text(encoding="utf-8", errors="replace"):
        emit(progress, "report", 1, 1, f"{target} is up to date")
        return target  # built from this very audit.json: nothing to redraw
    folder = target.parent / ASSETS
    folder.mkdir(parents=True, exist_ok=True)
    classifier = audit.classifier
    index_of = {name: i for i, name in enumerate(classifier.labels or [])}
    maps = _Maps(audit)
    classes = {c["name"]: c for c in data["classes"]}
    by_path = {i["path"]: i for i in data["images"]}

    pending_prototypes: list[tuple[Path, list[str], Any]] = []

    def with_prototype(entry: dict, name: str, members: list[str], heat: Any) -> dict:
        """``entry`` with its prototype's file; the members' maps are asked for, the
        picture is drawn once they are rendered."""
        shown = members[:PROTOTYPE_MEMBERS]
        for m in shown:
            maps.want(m, None)
        pending_prototypes.append((folder / name, shown, heat))
        return {**entry, "prototype": f"{ASSETS}/{name}"}

    suspicious = []
    for s in data["suspicious"][:SUSPICIOUS]:
        cluster = classes[s["class"]]["clusters"][s["cluster"]]
        suspicious.append(with_prototype(s, f"proto-{_name(s['class'], '')}-{s['cluster']}.png",
                                         cluster["members"], cluster["mean_map"]))
    strategies = [with_prototype(s, f"strategy-{s['id']}.png", s["members"], s["mean_map"])
                  for s in data.get("strategies", [])[:SUSPICIOUS]]

    shown_classes = []
    ordered = sorted((c for c in data["classes"] if c["clusters"]),
                     key=lambda c: (-max(k["suspicion"] for k in c["clusters"]), c["name"]))
    for c in ordered[:CLASSES]:
        entry = {"name": c["name"], "n_clusters": c["n_clusters"],
                 "members": sum(k["size"] for k in c["clusters"]), "clusters": []}
        eigen = f"eig-{_name(c['name'], '')}.png"
        eigenvalue_figure(c["eigenvalues"], c["n_clusters"], folder / eigen)
        entry["eigen"] = f"{ASSETS}/{eigen}"
        for k in c["clusters"]:
            examples = []
            for path in k["members"][:EXAMPLES]:
                predicted = index_of.get(by_path[path]["predicted"])
                examples.append({"path": path, "src": maps.want(path, predicted)})
            entry["clusters"].append({**k, "examples": examples,
                                      "more": max(0, k["size"] - EXAMPLES)})
        shown_classes.append(entry)

    mistakes = _mistake_section(data, maps, index_of)

    drawn = maps.render(folder, batch_size or audit.settings.batch_size, progress)
    blocks = concept_blocks(audit, strategies, folder, batch_size or audit.settings.batch_size,
                            progress)
    strategies = [{**s, "concept_block": blocks.get(s["id"])} for s in strategies]
    _draw_prototypes(pending_prototypes, folder)
    confusion = None
    if data.get("accuracy") is not None and data["confusion"]["classes"]:
        confusion_figure(data["confusion"]["classes"], data["confusion"]["matrix"],
                         folder / "confusion.png")
        confusion = f"{ASSETS}/confusion.png"
    labelled = sum(1 for i in data["images"] if i["label"] is not None)
    html = render_page("audit.html.j2", {
        "audit": data, "suspicious": suspicious, "shown_classes": shown_classes,
        "strategies": strategies, "unestablished": unestablished(data),
        "hidden_classes": max(0, len(ordered) - CLASSES), "mistakes": mistakes,
        "confusion": confusion, "labelled": labelled, "source": source,
        "classes_page": [c for c in data["classes"] if c["support"]][:200],
    })
    write_text_atomic(target, html)
    emit(progress, "report", drawn, drawn, f"wrote {target}")
    return target


def _mistake_section(data: dict, maps: _Maps, index_of: dict[str, int]) -> list[dict]:
    """The report's mistakes: the most frequent (label, predicted) confusions, each with a
    few examples whose maps for the predicted and the true class are asked of ``maps``."""
    pairs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for image in data["images"]:
        if image["correct"] is False:
            pairs[(image["label"], image["predicted"])].append(image["path"])
    mistakes = []
    for (label, predicted), paths in sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0])
                                            )[:MISTAKE_PAIRS]:
        examples = [{"path": p, "predicted_src": maps.want(p, index_of.get(predicted)),
                     "true_src": maps.want(p, index_of.get(label))}
                    for p in paths[:MISTAKE_EXAMPLES]]
        mistakes.append({"label": label, "predicted": predicted, "count": len(paths),
                         "examples": examples, "more": max(0, len(paths) - MISTAKE_EXAMPLES)})
    return mistakes


def _draw_prototypes(pending: list[tuple[Path, list[str], Any]], folder: Path) -> None:
    """Draw each prototype picture from its members' rendered thumbnails (a member whose
    thumbnail is missing is left out) and its mean map."""
    for path, members, heat in pending:
        photos = []
        for m in members:
            thumb = folder / _name(m, ".jpg")
            if thumb.is_file():
                with Image.open(thumb) as opened:
                    photos.append(opened.convert("RGB"))
        prototype(photos, np.asarray(heat), path)


def unestablished(data: dict) -> list[str]:
    """What the audit could not establish, in sentences (the report says them plainly)."""
    said = []
    search = data.get("strategy_search") or {}
    if search.get("stopped") and not any(s.get("kind") == "cross-class"
                                         for s in data.get("strategies", [])):
        said.append(f"No strategy across classes: {search['stopped']}.")
    if data.get("accuracy") is None:
        said.append("Without labels, no mistakes: strategies are ranked by their maps alone "
                    "(concentration, isolation) and nothing is known about which are wrong.")
    unclear = [c["name"] for c in data.get("classes", [])
               if c.get("resolution") and not c["resolution"]["clear"]
               and c["resolution"]["chosen_k"] > 1]
    if unclear:
        shown = ", ".join(unclear[:8]) + (f" and {len(unclear) - 8} more" if len(unclear) > 8
                                          else "")
        said.append(f"In {len(unclear)} group(s) ({shown}) the spectrum shows no clear jump: "
                    "their clusters were chosen by score among several resolutions, not "
                    "because the maps fall apart into clearly separate groups.")
    for s in data.get("strategies", []):
        check = s.get("causal_check") or {}
        if check.get("verdict") and check["verdict"] != "matters":
            said.append(f"Strategy {s['id']}: covering its region is not shown to matter "
                        "(see its causal check).")
    unchecked = [s["id"] for s in data.get("strategies", [])[:SUSPICIOUS]
                 if s.get("flip_rate") is None]
    if unchecked:
        said.append(f"Strategies {', '.join(map(str, unchecked))} were not checked causally "
                    "(only the most suspicious are; cl.audit(..., checks=N) checks more).")
    return said


def _png_uri(heat: np.ndarray, side: int = 64) -> str:
    image = Image.fromarray(colorize(unit_scaled(heat))).resize((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _strategy_title(s: dict) -> str:
    if s["kind"] == "cross-class":
        where = (f"across {len(s['groups'])} groups" if len(s["groups"]) > 1
                 else f"in {s['groups'][0]}")
        return f"strategy {s['id']}: {where}, what its mistakes share, {s['size']} images"
    group, cluster = s["clusters"][0]
    return f"strategy {s['id']}: {group} cluster {cluster}, {s['size']} images"


def notebook_html(audit: AuditView) -> str:
    """A compact inline view: headline figures and the most suspicious clusters with their
    mean maps (small data URIs; the full report is a file)."""
    from jinja2 import Environment

    data = audit.data
    classes = {c["name"]: c for c in data["classes"]}
    rows = []
    for s in data.get("strategies", [])[:SUSPICIOUS]:
        rows.append({**s, "title": _strategy_title(s), "uri": _png_uri(np.asarray(s["mean_map"]))})
    for s in data["suspicious"][:SUSPICIOUS] if not rows else []:
        cluster = classes[s["class"]]["clusters"][s["cluster"]]
        rows.append({**s, "title": f"{s['class']} cluster {s['cluster']} ({s['size']} images)",
                     "uri": _png_uri(np.asarray(cluster["mean_map"]))})
    template = Environment(autoescape=True).from_string(
        "<div><b>convlens audit</b>: {{ d.images|length }} images, {{ d.errors|length }} "
        "unreadable{% if d.accuracy is not none %}, accuracy {{ '%.1f'|format(100 * d.accuracy) }}%"
        "{% endif %}; report: {{ report }}<table>{% for r in rows %}<tr><td><img src='{{ r.uri }}' "
        "width=64></td><td><b>{{ r.title }}</b>, "
        "suspicion {{ '%.2f'|format(r.suspicion) }}<br>{{ r.why }}{% if r.causal %}<br><i>"
        "{{ r.causal }}</i>{% endif %}</td></tr>{% endfor %}</table></div>")
    return template.render(d=data, rows=rows, report=str(audit.out / "report.html"))
