"""Explain thousands of image files: batch by batch, resumable, safe against crashes.

:class:`ExplainJob` is what ``convlens explain`` runs. It reads the inputs with
:func:`convlens.io.datasets.scan_inputs` (the output folder is never read: it is excluded
and marked) and runs on an engine (:mod:`convlens.engines`, like the audit and ``evaluate``):
the engine decodes each batch (bad files become problems, not crashes) and its worker
explains it with :func:`convlens.explanations.explain` (:func:`explain_batch`: the maps at
model resolution, their peaks, the predictions); this process takes the batches in order,
draws the PNGs on the photos (decoded again here) atomically and appends the batch's records
to a :class:`~convlens.store.ResultStore` under ``OUT/records/``. The default engine is the
local one (``workers`` decoding processes, the model in this process); ``engine="ray"``
explains on a Ray actor pool with the same files as a result. Memory is bounded by the
batch size, whatever the number of images.

Resuming. Each record is keyed by the file's relative path, its content (SHA-256) and the
configuration's fingerprint (model weights, labels, preprocessing, methods, target, layer,
normalisation, options); a rerun of the same command skips keys already stored, and a
run with another configuration in the same folder is refused until ``overwrite=True``
(``--overwrite``). The engine is not part of the configuration: a run started on one engine
resumes on another. A run killed at any moment (even ``kill -9``) and run again ends with
the same files as an uninterrupted run: every file is written atomically, a batch's
records are written after its PNGs, and output names are assigned over the whole sorted
input list before anything runs, so they do not depend on where a run stopped.

``normalize="batch"`` means one scale per method for the whole run (not per
``batch_size`` images): the run's scale of a method is the maximum over all images of each
image's own percentile peak (:func:`convlens.present.heatmap.scale_of` with ``"image"``).
Pass 1 explains and stores each map, divided by its own peak, as float16 at the model's
resolution next to its shard (``OUT/records/000001.maps.npz``); pass 2 renders every PNG
with the run's scales. The scales in every record are then the same whatever the batch
size. With ``normalize="image"`` PNGs are drawn in pass 1 and no maps are stored.

Results. ``OUT/records/*.jsonl`` hold every record (one JSON object per line, appended
per batch, never rewritten); ``OUT/records/summary.json`` is rewritten after every batch
with counts only (O(1) per batch). ``OUT/results.json`` is rebuilt from the shards once,
at the end: the header (model, methods, ...), the counts, the shard list, this run's bad
files (``errors``) and every record (``images``). To read all records without it:
``ResultStore.open(OUT / "records").records()``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from convlens import explanations as explanations_module
from convlens.attribution.core import get_method
from convlens.engines import Engine, UnitResult, WorkerFactory, get_engine, in_unit_order
from convlens.errors import ConvlensError, ConvlensWarning, OutputError
from convlens.files import atomic_output, claim_output, write_json_atomic
from convlens.io.datasets import Batch, Entry, scan_inputs
from convlens.io.images import InputProblem, load_image, safe_output_name
from convlens.models.classifier import Classifier, Prepared
from convlens.preprocessing import Geometry, coverage_mask, map_to_original
from convlens.present import figures, pages
from convlens.present import views as views_module
from convlens.present.heatmap import is_empty, to_unit
from convlens.present.views import is_pixel_level
from convlens.progress import ProgressCallback, ProgressLike, emit, resolve_progress
from convlens.store import ResultStore

__all__ = ["ExplainJob", "JobOutcome", "explain_batch", "model_fingerprint"]

_SIGN = "positive"  # what the PNGs show: evidence for the class


def model_fingerprint(classifier: Classifier) -> str:
    """A hash of the network's parameters and buffers (names, shapes, values).

    Part of the configuration, so a retrained model saved under the same name does not
    count as having done the work already.
    """
    hasher = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in classifier.module.state_dict().items():
            hasher.update(name.encode())
            hasher.update(str(tuple(tensor.shape)).encode())
            hasher.update(str(tensor.dtype).encode())
            if tensor.numel():
                hasher.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8)
                              .numpy().tobytes())
    return hasher.hexdigest()[:16]


@dataclass
class JobOutcome:
    """What :meth:`ExplainJob.run` did.

    Attributes:
        records: Explanations stored in the folder (this run and earlier ones).
        new: Explanations computed by this run.
        skipped: Images skipped because an earlier run had finished them.
        problems: Bad inputs of this run: ``{"path", "error"}``.
        results: ``OUT/results.json``.
        page: ``OUT/index.html``, or ``None`` when the job was asked for no page.
    """

    records: int
    new: int
    skipped: int
    problems: list[dict[str, str]]
    results: Path
    page: Path | None = None


def group_methods(methods: Sequence[str], options: Mapping[str, Mapping[str, Any]]
                  ) -> list[tuple[list[str], dict[str, Any]]]:
    """Methods that share the same options, in first-seen order: one attribution call each.

    ``attribute`` takes one set of options per call, so two methods with different values
    of the same option (``steps=25`` for one, the default for the other) need separate
    calls; methods with equal options stay together (gradient CAMs then share a pass).
    """
    groups: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for method in methods:
        opts = dict(options.get(method, {}))
        key = json.dumps(opts, sort_keys=True, default=repr)
        groups.setdefault(key, ([], opts))[0].append(method)
    return list(groups.values())


def explain_batch(classifier: Classifier, batch: Batch, *, methods: Sequence[str],
                  options: Mapping[str, Mapping[str, Any]], target: Any, layer: str | None,
                  batch_size: int) -> list[list[dict[str, Any]]]:
    """The explain job's per-batch work on an engine (:class:`convlens.engines.WorkerFactory`).

    Explains the decoded items of ``batch`` (``batch.x``, the network inputs the engine
    decoded) with every method, one :func:`convlens.explanations.explain` call per group of
    methods sharing options (:func:`group_methods`). Nothing is drawn or written here: per
    item, per explained class (one, or K for ``top:K``), a view ``{"predictions", "target",
    "target_label", "probability", "layer", "notes", "maps", "peaks"}`` whose ``maps`` are
    the 2-D maps at model resolution (float32 tensors) and ``peaks`` their own percentile
    peaks; :class:`ExplainJob` turns them into records and PNGs in its own process.
    """
    prepared = Prepared(batch.x, [None] * len(batch.items),
                        [item.geometry for item in batch.items])
    names = [item.relpath for item in batch.items]
    per_group = []
    for group, opts in group_methods(methods, options):
        opts = dict(opts)
        group_layer = opts.pop("layer", layer)
        with warnings.catch_warnings():  # the notes go into the records instead
            warnings.simplefilter("ignore", ConvlensWarning)
            per_group.append((group, explanations_module.explain(
                classifier, prepared, group, target=target, layer=group_layer,
                normalize="image", sign=_SIGN, names=names, batch_size=batch_size,
                method_options=opts)))
    per_image = len(per_group[0][1]) // len(batch.items)
    return [[_view(per_group, position * per_image + rank) for rank in range(per_image)]
            for position in range(len(batch.items))]


def _view(per_group: Sequence[tuple[list[str], Sequence[Any]]], row: int) -> dict[str, Any]:
    """Row ``row`` of every group's explanations, as one view of :func:`explain_batch`."""
    first = per_group[0][1][row]
    maps, peaks, layer_name, notes = {}, {}, None, []
    for methods, explanations in per_group:
        explanation = explanations[row]
        layer_name = layer_name or explanation.layer
        notes.extend(n for n in getattr(explanation, "notes", []) if n not in notes)
        for method in methods:
            # a copy: the map alone travels back from a Ray worker, not the whole batch's
            maps[method] = explanation.raw_map(method).float().clone()
            peaks[method] = float(explanation.scales[method])
    return {"predictions": first.predictions, "target": first.target,
            "target_label": first.target_label, "probability": first.probability,
            "layer": layer_name, "notes": notes, "maps": maps, "peaks": peaks}


def _validate_options(methods: Sequence[str], options: Mapping[str, Mapping[str, Any]]
                      ) -> dict[str, dict[str, Any]]:
    unknown = sorted(set(options) - set(methods))
    if unknown:
        raise ConvlensError(f"options given for {', '.join(unknown)}, which is not among the "
                            f"methods run ({', '.join(methods)}); add it to the methods or "
                            "drop its options")
    for method in methods:
        get_method(method)
    return {m: dict(v) for m, v in options.items() if v}


class ExplainJob:
    """Explain many images with several methods and write everything under ``out``.

    Files written (``NAME`` is a sanitised stem, unique in ``out``, that cannot escape it):
    ``NAME.METHOD.png`` per method (``NAME.classC.METHOD.png`` with ``top:K``, one per
    class C), ``NAME.grid.png`` per image (with ``top:K`` one grid holding the K classes,
    one row each), ``results.json``, ``records/`` (the store) and ``index.html``
    (:mod:`convlens.present.pages`). See the module docstring for resuming,
    ``normalize="batch"`` and how results are laid out.

    Args:
        classifier: The model.
        methods: Method names.
        out: Output folder (created and marked as convlens output).
        target: ``None``/``"pred"``, a class index or name, or ``"top:K"``.
        layer: Layer for layer-space methods.
        normalize: ``image`` (each map to its own peak) or ``batch`` (one scale per method
            over the whole run).
        batch_size: Images explained together; results do not depend on it.
        workers: Decoding processes of the local engine (0: decode in this process).
        options: Per-method options, ``{"integrated_gradients": {"steps": 25}}``; a
            ``layer`` entry overrides ``layer`` for that method.
        overwrite: Delete an earlier run's results in ``out`` first (needed when its
            configuration differs).
        page: Write ``index.html`` at the end when the page module exists.
        grids: Draw the titled grid per image (matplotlib: most of the time per image on
            a CPU); ``False`` writes the overlays only.
        engine: Where the batches are decoded and explained: ``"local"`` (default: this
            process, ``workers`` decoding processes), ``"ray"`` (Ray Data: parallel
            decoding, an actor pool with one model copy each; ``pip install
            'convlens[ray]'``) or an engine object (:mod:`convlens.engines`). Every engine
            writes the same files; this process draws and writes them.
        engine_options: Options of the engine (``workers`` for local; ``address``,
            ``actors``, ``cpus_per_actor``, ``gpus_per_actor`` for Ray).

    Raises:
        ConvlensError: Unknown method, options for a method not run, bad ``normalize``.
        EngineError: An unknown engine, options it does not take, Ray not installed.
    """

    def __init__(self, classifier: Classifier, methods: Sequence[str], out: str | os.PathLike,
                 *, target: Any = None, layer: str | None = None, normalize: str = "image",
                 batch_size: int = 8, workers: int = 0,
                 options: Mapping[str, Mapping[str, Any]] | None = None,
                 overwrite: bool = False, page: bool = True, grids: bool = True,
                 max_pixels: int | None = None, engine: str | Engine | None = None,
                 engine_options: Mapping[str, Any] | None = None) -> None:
        if normalize not in ("image", "batch"):
            raise ConvlensError(f"normalize must be 'image' or 'batch', got {normalize!r}")
        if not methods:
            raise ConvlensError("ExplainJob needs at least one method (see convlens.methods())")
        self.classifier = classifier
        self.methods = list(methods)
        self.out = Path(out)
        self.target = None if target in (None, "pred") else target
        self.layer = layer
        self.normalize = normalize
        self.batch_size = max(1, int(batch_size))
        self.workers = max(0, int(workers))
        self.options = _validate_options(self.methods, options or {})
        self.overwrite = overwrite
        self.page = page
        self.grids = grids
        self.max_pixels = max_pixels
        self.layer_name: str | None = None
        engine_options = dict(engine_options or {})
        if engine in (None, "local"):
            engine_options.setdefault("workers", self.workers)
        self.engine = get_engine(engine, **engine_options)

    def _pixel_cap(self) -> dict[str, int]:
        """``load_image`` keyword for the job's pixel cap (none: the library's default)."""
        return {} if self.max_pixels is None else {"max_pixels": self.max_pixels}

    @property
    def results_path(self) -> Path:
        return self.out / "results.json"

    @property
    def store_path(self) -> Path:
        return self.out / "records"

    def config(self) -> dict[str, Any]:
        """What the results depend on (stored, compared on reopening). Not the batch size."""
        labels = self.classifier.labels
        return {
            "model": self.classifier.name,
            "weights": model_fingerprint(self.classifier),
            "labels": hashlib.sha256(json.dumps(labels).encode()).hexdigest()[:16],
            "preprocessing": asdict(self.classifier.preprocessing),
            "methods": self.methods,
            "target": "pred" if self.target is None else self.target,
            "layer": self.layer,
            "normalize": self.normalize,
            "options": self.options,
            "sign": _SIGN,
        }

    def header(self) -> dict[str, Any]:
        """The run's description, as in ``results.json`` and on the page."""
        return {
            "model": self.classifier.name,
            "methods": self.methods,
            "target": "pred" if self.target is None else self.target,
            "layer": self.layer_name or self.layer,
            "normalize": self.normalize,
            "options": self.options,
            "sign": _SIGN,
            "device": str(self.classifier.device),
        }

    # ------------------------------------------------------------------------- run

    def run(self, inputs: Iterable[str | os.PathLike[str]], *,
            progress: ProgressLike = None) -> JobOutcome:
        """Process every input, skipping what an earlier run of this configuration finished.

        Args:
            inputs: Image files and folders (walked recursively; ``out`` is skipped).
            progress: A callback given a :class:`~convlens.progress.ProgressEvent` per
                batch (stage ``explain``, then ``render`` for ``normalize="batch"``),
                ``True`` (plain lines, or bars in a notebook), ``False``/None for silence
                (see :func:`convlens.progress.resolve_progress`).

        Returns:
            A :class:`JobOutcome`; bad files are in ``problems`` and in results.json.

        Raises:
            OutputError: ``out`` cannot be created or written (a file in the way, no
                permission, full disk); finished batches stay stored.
            StoreMismatchError: ``out`` holds results of another configuration.
        """
        inputs = list(inputs)
        callback = resolve_progress(progress)
        with claim_output(self.out, overwrite=self.overwrite, inputs=inputs,
                          what="convlens explain"):
            return self._run(inputs, callback)

    def _run(self, inputs: list[str | os.PathLike[str]], progress: ProgressCallback | None
             ) -> JobOutcome:
        store = ResultStore(self.store_path, self.config(), overwrite=self.overwrite)
        dataset = scan_inputs(inputs, exclude=[self.out])
        problems: list[dict[str, str]] = [_problem(p) for p in dataset.problems]
        names = self._names(dataset.entries)
        done = store.done_keys()
        total, seen, new, skipped = len(dataset.entries), 0, 0, 0
        stored = len(done)
        emit(progress, "explain", 0, total)
        factory = WorkerFactory(explain_batch, self.classifier, methods=self.methods,
                                options=self.options, target=self.target, layer=self.layer,
                                batch_size=self.batch_size)
        units = self.engine.map_units(dataset.entries, self.classifier.preprocessing, factory,
                                      batch_size=self.batch_size,
                                      salt=store.fingerprint or "", skip=done,
                                      max_pixels=self.max_pixels)
        try:
            # in unit order whatever the engine: one shard per unit, the same files
            for unit in in_unit_order(units):
                batch = unit.batch
                problems.extend(_problem(p) for p in batch.problems)
                if batch.items:
                    records, arrays, undrawn = self._store_batch(unit, names)
                    problems.extend(undrawn)
                    store.append(records, arrays)
                    new += len(records)
                    stored += len(batch.items) - len(undrawn)
                seen += batch.size
                skipped += len(batch.skipped)
                store.write_summary({"images_seen": seen, "images_total": total,
                                     "images_stored": stored, "problems": len(problems),
                                     "shards": store.next_shard().name})
                emit(progress, "explain", seen, total,
                     f"{len(batch.items)} explained, {len(batch.skipped)} already done, "
                     f"{len(batch.problems)} bad")
            if self.normalize == "batch":
                problems.extend(self._render_all(store, progress))
        except OutputError:
            self._write_results(store, problems, suppress=True)
            raise
        count = self._write_results(store, problems)
        page = self._write_page(store, problems) if self.page else None
        return JobOutcome(count, new, skipped, problems, self.results_path, page)

    def _names(self, entries: Sequence[Entry]) -> dict[str, str]:
        """Output stems for every entry, assigned in input order (stable across reruns)."""
        used: set[str] = set()
        return {e.relpath: safe_output_name(e.path, used) for e in entries}

    # ------------------------------------------------------------------ one batch

    def _store_batch(self, unit: UnitResult, names: Mapping[str, str]
                     ) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, str]]]:
        """One explained unit (:func:`explain_batch`'s views) -> its records (+ stored maps
        for batch scaling) and the images that could not be drawn; with ``normalize="image"``
        its PNGs are drawn here, on the photos decoded again in this process (the engine ships
        no photos). A photo that cannot be decoded again (deleted or replaced since the engine
        read it) is a problem and gets no record, so a rerun explains it again."""
        batch = unit.batch
        stems = [names[item.relpath] for item in batch.items]
        records: list[dict[str, Any]] = []
        maps_to_store: dict[str, np.ndarray] = {}
        undrawn: list[dict[str, str]] = []
        for position, item in enumerate(batch.items):
            stem, per_image = stems[position], len(unit.result[position])
            views = []
            for rank, view in enumerate(unit.result[position]):
                maps, peaks, layer_name = view["maps"], view["peaks"], view["layer"]
                self.layer_name = self.layer_name or layer_name
                prefix = stem if per_image == 1 else f"{stem}.class{view['target']}"
                record = {
                    "path": str(item.path),
                    "name": stem,
                    "predictions": [{"label": label, "probability": round(p, 6)}
                                    for label, p in view["predictions"]],
                    "target": {"index": view["target"], "label": view["target_label"],
                               "probability": round(view["probability"], 6)},
                    "empty_maps": [m for m in self.methods if _is_empty(maps[m])],
                    "scales": dict(peaks),
                    "files": {m: f"{prefix}.{m}.png" for m in self.methods},
                    "key": item.key,
                    "relpath": item.relpath,
                    "digest": item.digest,
                    "rank": rank,
                    "peaks": peaks,
                    "layer": layer_name,
                    "geometry": _geometry_record(item.geometry),
                    "notes": view["notes"],
                }
                readable = {m: {"map": f"{prefix}.{m}.map.png",
                                "overlay": f"{prefix}.{m}.dim.png"}
                            for m in self.methods if is_pixel_level(m)}
                if readable:  # sparse pixel maps: also the map alone and a dimmed overlay
                    record["views"] = readable
                if item.label is not None:
                    record["label"] = item.label
                if self.grids:
                    record["files"]["grid"] = f"{stem}.grid.png"
                if self.normalize == "batch":
                    index = len(records)
                    for method, raw in maps.items():
                        peak = peaks[method] or 1.0
                        maps_to_store[f"{index}.{method}"] = (raw / peak).numpy().astype(
                            np.float16)
                records.append(record)
                views.append((record, maps))
            if self.normalize == "image":
                try:
                    image = load_image(item.path, **self._pixel_cap())
                except ConvlensError as error:
                    del records[len(records) - len(views):]
                    reason = getattr(error, "reason", None) or str(error)
                    undrawn.append({"path": str(item.path),
                                    "error": f"cannot draw its maps: {reason}"})
                    continue
                self._render_image(image, item.geometry, views, scales=None)
        arrays = {"maps": maps_to_store} if maps_to_store else {}
        return records, arrays, undrawn

    # ------------------------------------------------------------------ rendering

    def _render_image(self, image: Image.Image, geometry: Geometry,
                      views: Sequence[tuple[dict[str, Any], dict[str, torch.Tensor]]],
                      scales: Mapping[str, float] | None) -> None:
        """Overlays per target and method, then one grid for the image (all its targets)."""
        rows = []
        seen = coverage_mask(geometry)
        for record, maps in views:
            panels = []
            for method in self.methods:
                scale = (scales or record["peaks"])[method]
                heatmap = _heatmap(maps[method], scale, geometry)
                with atomic_output(self.out / record["files"][method]) as temporary:
                    figures.overlay(image, heatmap, seen=seen).save(temporary)
                readable = (record.get("views") or {}).get(method)
                if readable:
                    with atomic_output(self.out / readable["map"]) as temporary:
                        views_module.map_image(heatmap, seen=seen).save(temporary)
                    with atomic_output(self.out / readable["overlay"]) as temporary:
                        views_module.dimmed_overlay(image, heatmap, seen=seen).save(temporary)
                caption = method + (" (empty)" if method in record["empty_maps"] else "")
                panels.append((caption, heatmap, scale))
            if not self.grids:
                continue
            target = record["target"]
            title = f"{record['name']}: {target['label']} ({target['probability']:.1%})"
            rows.append(figures.figure_to_image(figures.grid_figure(image, panels, title=title)))
        if not rows:
            return
        grid = rows[0] if len(rows) == 1 else _class_grid(rows)
        with atomic_output(self.out / views[0][0]["files"]["grid"]) as temporary:
            grid.save(temporary)

    def run_scales(self, store: ResultStore) -> dict[str, float]:
        """The run's scale per method: the maximum of every stored image's own peak."""
        scales = dict.fromkeys(self.methods, 0.0)
        for record in store.records():
            for method, peak in record["peaks"].items():
                scales[method] = max(scales[method], float(peak))
        return scales

    def _render_all(self, store: ResultStore, progress: ProgressCallback | None
                    ) -> list[dict[str, str]]:
        """Pass 2 of ``normalize="batch"``: draw every stored map with the run's scales.

        ``records/rendered.json`` remembers the scales drawn and which shards are done, so a
        rerun with nothing new draws nothing, and a killed pass 2 resumes. A photo that
        cannot be read any more (deleted since pass 1) is returned as a problem.
        """
        problems = []
        scales = self.run_scales(store)
        state_path = store.folder / "rendered.json"
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        finished = set(state.get("shards", [])) if state.get("scales") == scales else set()
        shards = store.shards()
        emit(progress, "render", 0, len(shards))
        for number, shard in enumerate(shards, start=1):
            if shard.name not in finished:
                records = store.shard_records(shard)
                stored = store.read_array(shard, "maps")
                by_key: dict[str, list[tuple[dict[str, Any], dict[str, torch.Tensor]]]] = {}
                for index, record in enumerate(records):
                    maps = {m: torch.from_numpy(stored[f"{index}.{m}"].astype(np.float32))
                            * (record["peaks"][m] or 1.0) for m in self.methods}
                    by_key.setdefault(record["key"], []).append((record, maps))
                for views in by_key.values():
                    record = views[0][0]
                    try:
                        image = load_image(record["path"], **self._pixel_cap())
                    except ConvlensError as error:
                        reason = getattr(error, "reason", None) or str(error)
                        problems.append({"path": record["path"],
                                         "error": f"cannot draw its maps: {reason}"})
                        continue
                    self._render_image(image, _geometry(record["geometry"]), views, scales)
                if not problems:
                    finished.add(shard.name)
                write_json_atomic(state_path, {"scales": scales, "shards": sorted(finished)})
            emit(progress, "render", number, len(shards))
        return problems

    # -------------------------------------------------------------------- results

    def _final_records(self, store: ResultStore) -> Iterable[dict[str, Any]]:
        scales = self.run_scales(store) if self.normalize == "batch" else None
        for record in store.records():
            if scales is not None:
                record = {**record, "scales": {m: scales[m] for m in record["peaks"]}}
            yield record

    def _write_results(self, store: ResultStore, problems: list[dict[str, str]], *,
                       suppress: bool = False) -> int:
        """Rebuild ``results.json`` from the shards (once per run); returns the record count."""
        try:
            images = list(self._final_records(store))
            summary = {
                **self.header(),
                "fingerprint": store.fingerprint,
                "counts": {"explanations": len(images), "errors": len(problems)},
                "shards": [f"records/{s.name}" for s in store.shards()],
                "how_to_read": "images: every record (also, one JSON object per line, in "
                               "records/*.jsonl, read in name order); errors: this run's "
                               "bad inputs",
                "images": images,
                "errors": problems,
            }
            write_json_atomic(self.results_path, summary)
            return len(images)
        except OutputError:
            if suppress:
                return 0
            raise

    def _write_page(self, store: ResultStore, problems: list[dict[str, str]]) -> Path | None:
        """``index.html`` via :mod:`convlens.present.pages`."""
        header = {**self.header(), "errors": problems}
        return pages.write_explain_page(self.out, header, list(self._final_records(store)))


# ------------------------------------------------------------------------- helpers


def _problem(problem: InputProblem) -> dict[str, str]:
    return {"path": str(problem.path), "error": problem.reason}


def _is_empty(raw: torch.Tensor) -> bool:
    return bool(is_empty(raw[None])[0])


def _heatmap(raw: torch.Tensor, scale: float, geometry: Geometry) -> np.ndarray:
    """A raw 2-D map at model resolution -> [0, 1] at the photo's size, with ``scale`` as 1."""
    unit = to_unit(raw[None].float(), torch.tensor([float(scale)]), _SIGN)[0]
    return map_to_original(unit, geometry)


def _geometry_record(geometry: Geometry | None) -> dict[str, Any] | None:
    if geometry is None:
        return None
    return {"original_size": list(geometry.original_size), "box": list(geometry.box)}


def _geometry(record: Mapping[str, Any]) -> Geometry:
    return Geometry(tuple(record["original_size"]), tuple(record["box"]))  # type: ignore[arg-type]


def _class_grid(rows: Sequence[Image.Image]) -> Image.Image:
    """Stack the per-class grids of one image (photo + methods, titled) into one picture.

    A local stand-in for ``convlens.explanations.class_grid`` (which lays the classes out as
    columns); each row here is a class.
    """
    width = max(row.width for row in rows)
    canvas = Image.new("RGB", (width, sum(row.height for row in rows)), "white")
    top = 0
    for row in rows:
        canvas.paste(row.convert("RGB"), (0, top))
        top += row.height
    return canvas
