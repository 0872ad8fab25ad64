"""Explain thousands of image files: batch by batch, resumable, safe against crashes.

:class:`ExplainJob` is what ``convlens explain`` runs. It reads the inputs with
:func:`convlens.io.datasets.scan_inputs` (the output folder is never read: it is excluded
and marked), decodes them with a DataLoader (bad files become problems, not crashes),
explains each batch with :func:`convlens.explanations.explain`, writes the PNGs atomically and
appends the batch's records to a :class:`~convlens.store.ResultStore` under
``OUT/records/``. Memory is bounded by the batch size, whatever the number of images.

Resuming. Each record is keyed by the file's relative path, its content (SHA-256) and the
configuration's fingerprint (model weights, labels, preprocessing, methods, target, layer,
normalisation, options); a rerun of the same command skips keys already stored, and a
run with another configuration in the same folder is refused until ``overwrite=True``
(``--overwrite``). A run killed at any moment (even ``kill -9``) and run again ends with
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
import importlib.util
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

from convlens.errors import ConvlensError, ConvlensWarning, OutputError
from convlens.files import atomic_output, claim_output, write_json_atomic
from convlens.io.datasets import Batch, Entry, batches, scan_inputs
from convlens.io.images import InputProblem, load_image, safe_output_name
from convlens.models.classifier import Classifier, Prepared
from convlens.preprocessing import Geometry, coverage_mask, map_to_original
from convlens.present.views import is_pixel_level
from convlens.progress import ProgressCallback, ProgressLike, emit, resolve_progress
from convlens.store import ResultStore

__all__ = ["ExplainJob", "JobOutcome", "model_fingerprint"]

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
        page: ``OUT/index.html`` when the page module is installed, else ``None``.
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


def _validate_options(methods: Sequence[str], options: Mapping[str, Mapping[str, Any]]
                      ) -> dict[str, dict[str, Any]]:
    from convlens.attribution.core import get_method

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
    one row each), ``results.json``, ``records/`` (the store) and ``index.html`` (when
    :mod:`convlens.present.pages` is installed). See the module docstring for resuming,
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
        workers: Decoding processes (0: decode in this process).
        options: Per-method options, ``{"integrated_gradients": {"steps": 25}}``; a
            ``layer`` entry overrides ``layer`` for that method.
        overwrite: Delete an earlier run's results in ``out`` first (needed when its
            configuration differs).
        page: Write ``index.html`` at the end when the page module exists.
        grids: Draw the titled grid per image (matplotlib: most of the time per image on
            a CPU); ``False`` writes the overlays only.

    Raises:
        ConvlensError: Unknown method, options for a method not run, bad ``normalize``.
    """

    def __init__(self, classifier: Classifier, methods: Sequence[str], out: str | os.PathLike,
                 *, target: Any = None, layer: str | None = None, normalize: str = "image",
                 batch_size: int = 8, workers: int = 0,
                 options: Mapping[str, Mapping[str, Any]] | None = None,
                 overwrite: bool = False, page: bool = True, grids: bool = True,
                 max_pixels: int | None = None) -> None:
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
        try:
            for batch in batches(dataset.entries, self.classifier.preprocessing,
                                 batch_size=self.batch_size, workers=self.workers,
                                 salt=store.fingerprint or "", skip=done,
                                 max_pixels=self.max_pixels):
                problems.extend(_problem(p) for p in batch.problems)
                if batch.items:
                    records, arrays = self._explain_batch(batch, names)
                    store.append(records, arrays)
                    new += len(records)
                    stored += len(batch.items)
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

    def _explain_batch(self, batch: Batch, names: Mapping[str, str]
                       ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Explain the decoded items of one batch: records (+ stored maps for batch scaling)."""
        from convlens.explanations import explain

        stems = [names[item.relpath] for item in batch.items]
        images = [batch.image(k) for k in range(len(batch.items))]
        # the batch's own network inputs (load_file: the same pixels as audit's), not a
        # second preprocessing of the full-size photos kept for drawing
        prepared = Prepared(batch.x, images, [item.geometry for item in batch.items])
        per_group = []
        for methods, opts in group_methods(self.methods, self.options):
            opts = dict(opts)
            layer = opts.pop("layer", self.layer)
            with warnings.catch_warnings():  # the notes go into the records instead
                warnings.simplefilter("ignore", ConvlensWarning)
                per_group.append((methods, explain(self.classifier, prepared, methods,
                                                   target=self.target, layer=layer,
                                                   normalize="image", sign=_SIGN,
                                                   names=stems, batch_size=self.batch_size,
                                                   method_options=opts)))
        rows = len(per_group[0][1])
        per_image = rows // len(batch.items)
        records: list[dict[str, Any]] = []
        maps_to_store: dict[str, np.ndarray] = {}
        for position, item in enumerate(batch.items):
            image, stem = images[position], stems[position]
            views = []
            for rank in range(per_image):
                row = position * per_image + rank
                first = per_group[0][1][row]
                maps, peaks, layer_name, notes = {}, {}, None, []
                for methods, explanations in per_group:
                    explanation = explanations[row]
                    layer_name = layer_name or explanation.layer
                    notes.extend(n for n in getattr(explanation, "notes", []) if n not in notes)
                    for method in methods:
                        maps[method] = explanation.raw_map(method).float()
                        peaks[method] = float(explanation.scales[method])
                self.layer_name = self.layer_name or layer_name
                prefix = stem if per_image == 1 else f"{stem}.class{first.target}"
                record = {
                    "path": str(item.path),
                    "name": stem,
                    "predictions": [{"label": label, "probability": round(p, 6)}
                                    for label, p in first.predictions],
                    "target": {"index": first.target, "label": first.target_label,
                               "probability": round(first.probability, 6)},
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
                    "notes": notes,
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
                self._render_image(image, item.geometry, views, scales=None)
        arrays = {"maps": maps_to_store} if maps_to_store else {}
        return records, arrays

    # ------------------------------------------------------------------ rendering

    def _render_image(self, image: Image.Image, geometry: Geometry,
                      views: Sequence[tuple[dict[str, Any], dict[str, torch.Tensor]]],
                      scales: Mapping[str, float] | None) -> None:
        """Overlays per target and method, then one grid for the image (all its targets)."""
        from convlens.present import figures
        from convlens.present import views as views_module

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
        """``index.html`` via :mod:`convlens.present.pages`, when that module is installed."""
        if importlib.util.find_spec("convlens.present.pages") is None:
            return None
        from convlens.present import pages

        header = {**self.header(), "errors": problems}
        return pages.write_explain_page(self.out, header, list(self._final_records(store)))


# ------------------------------------------------------------------------- helpers


def _problem(problem: InputProblem) -> dict[str, str]:
    return {"path": str(problem.path), "error": problem.reason}


def _is_empty(raw: torch.Tensor) -> bool:
    from convlens.present.heatmap import is_empty

    return bool(is_empty(raw[None])[0])


def _heatmap(raw: torch.Tensor, scale: float, geometry: Geometry) -> np.ndarray:
    """A raw 2-D map at model resolution -> [0, 1] at the photo's size, with ``scale`` as 1."""
    from convlens.present.heatmap import to_unit

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
