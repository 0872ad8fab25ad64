"""``audit()``: a dataset-scale look at what a classifier does, and :class:`Audit`, its result.

One streaming pass (:mod:`convlens.auditing.passes`) stores per image the prediction, the top 5,
a small attribution map and the feature layer's pooled activations; SpRAy finds the clusters
of each group at several resolutions (:mod:`convlens.auditing.groups`),
:mod:`convlens.auditing.strategies` finds what the mistakes share across classes and ranks
both, and :mod:`convlens.auditing.causal` checks the top ones (covering forwards on the pass's
engine, results kept in the store);
``OUT/audit.json`` holds everything (schema in :func:`convlens.auditing.analysis.build_audit`)
and :meth:`Audit.report` draws ``OUT/report.html``, recomputing full-size maps only for the
images it shows.

Like :mod:`convlens.explanations`, this module sits above the layers (docs/architecture.md,
"Layers and the direction data flows"): it computes with audit/ and draws with present/.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convlens.attribution.core import get_method
from convlens.auditing.analysis import GROUP_BY, MapReader, StoredImage, build_audit, stored_images
from convlens.auditing.causal import CausalResult, run_check
from convlens.auditing.passes import PassSettings, run_pass
from convlens.auditing.report import notebook_html, write_report
from convlens.auditing.scoring import card, config_entry, parse_audit_metrics
from convlens.auditing.spray import check_neighbours
from convlens.engines import get_engine
from convlens.errors import ConvlensError, LabelMismatchError, LayerError, unknown_choice
from convlens.files import check_not_input, check_output, claim_output, write_json_atomic
from convlens.io.datasets import (
    dataset_relative_path,
    detect_layout,
    no_images_message,
    read_dataset,
    unknown_labels,
)
from convlens.models.classifier import Classifier, ModelLike
from convlens.models.fingerprint import model_fingerprint
from convlens.models.layers import resolve_layer
from convlens.progress import ProgressLike, emit, resolve_progress
from convlens.store import ResultStore, config_fingerprint

STORE_FOLDER = "store"
CHECK_MEMBERS = 128
CHECK_VERSION = 3
MAX_CLUSTER_MAPS = 50_000
"""Default cap on the maps SpRAy clusters per group (docs/capacity.md, "Clustering")."""




def audit(classifier: ModelLike, data: str | os.PathLike[str], *, method: str = "gradcam",
          layer: str | None = None, group_by: str = "predicted",
          out: str | os.PathLike[str] = "convlens-audit", batch_size: int = 32, workers: int = 0,
          overwrite: bool = False, map_size: int = 32, checks: int = 3, seed: int = 0,
          layout: str = "auto", progress: ProgressLike = None,
          metrics: Sequence[str] | str | None = None,
          metric_options: dict[str, dict[str, Any]] | None = None,
          engine: Any = "local", engine_options: dict[str, Any] | None = None,
          neighbours: str = "exact", max_cluster_maps: int | None = MAX_CLUSTER_MAPS,
          concepts: bool | str | None = None, **options: Any) -> Audit:
    """Audit ``classifier`` on the images of ``data``.

    Args:
        classifier: A :class:`~convlens.models.classifier.Classifier`.
        data: An ImageFolder tree (sub-folder names must be the model's labels), a CSV with
            ``path,label`` columns, or a plain folder of images (no accuracy then).
        method: Attribution method (see :func:`convlens.methods`); Grad-CAM by default.
        layer: For layer methods; default the last spatial layer.
        group_by: ``"predicted"`` (the decisions the model made) or ``"label"``.
        out: Output folder: ``audit.json``, ``store/`` (resumable), the report.
        batch_size, workers: Images per forward; decoding processes.
        overwrite: Replace results of a different configuration in ``out``.
        map_size: Side of the stored maps (float16).
        checks: How many of the most suspicious strategies get the causal check.
        seed: Seeds SpRAy and the causal check's random regions.
        layout: ``auto``, ``imagefolder``, ``csv`` or ``plain``.
        progress: A callback given each :class:`~convlens.progress.ProgressEvent`, ``True``
            (plain lines, or bars in a notebook), ``False``/None for silence (see
            :func:`convlens.progress.resolve_progress`).
        metrics: Maps-based metrics scored per image on the full-resolution map of the
            predicted class, in the same pass: names or ``name:preset`` as in
            :func:`convlens.evaluate` (``["deletion", "insertion:xplique"]`` or
            ``"deletion,insertion"``). Method-based metrics (max_sensitivity,
            model_randomisation, random_logit) are refused: too costly per image. Their
            means with bootstrap 95 % intervals go to ``audit.json`` (top-level ``metrics``,
            per class and per cluster ``metrics``) and the report.
        metric_options: ``{metric key: {option: value}}``.
        engine: Where the pass runs: ``"local"`` (this process, ``workers`` decoding
            processes), ``"ray"`` (Ray Data: parallel decoding, an actor pool with one
            model copy per actor, GPUs per actor when present; ``pip install
            'convlens[ray]'``) or an engine object (:mod:`convlens.engines`). Every engine
            writes the same store and the same ``audit.json``; a run started on one engine
            resumes on another.
        engine_options: For ``engine="ray"``: ``address``, ``actors``, ``cpus_per_actor``,
            ``gpus_per_actor``, ``init_options`` (see :class:`convlens.engines.ray.RayEngine`).
        neighbours: SpRAy's neighbour search: ``"exact"`` or ``"nndescent"`` (approximate,
            for groups of more than ~50,000 maps; ``pip install 'convlens[scale]'``).
        max_cluster_maps: SpRAy clusters at most this many maps per group (a seeded
            subsample; the others join the majority cluster of their nearest sampled maps),
            so a group of a million costs minutes, not hours (docs/capacity.md). ``None``:
            every map. Groups below the cap are clustered whole, as before.
        concepts: Record every image's channel relevances (CRP's ``R_c`` of the predicted
            class) at a layer in the same pass: ``True`` for the CAM layer (the model's
            default layer for other methods), or a layer's dotted name; ``None``/``False``:
            none. Every strategy then lists its most relevant concepts against the rest of
            its groups with reference images, and concepts hot on a few images of several
            classes become candidate strategies (docs/architecture.md, "Concepts").
        **options: Options of the method.

    Returns:
        An :class:`Audit`; ``audit.errors`` lists unreadable files (they were skipped).

    Raises:
        ConvlensError: ``data`` does not exist, holds no images ("no images found in ...",
            as ``convlens explain`` says), or has no labels while ``group_by="label"``;
            a CSV with a NUL byte, or listing one file twice with different labels.
        LabelMismatchError: Labels in ``data`` that the model does not know.
        MetricError: An unknown or method-based metric, preset or option.
        StoreMismatchError: ``out`` holds results of another configuration (no overwrite).
        EngineError: The engine cannot start (Ray not installed, no cluster at the
            address) or one of its workers failed.
    """
    if not isinstance(classifier, Classifier):
        raise ConvlensError(f"audit needs a convlens.Classifier (cl.load_model() or "
                            f"cl.Classifier(module, labels=...)), got {type(classifier).__name__}")
    if group_by not in GROUP_BY:
        raise ConvlensError(unknown_choice("group-by value", group_by, GROUP_BY))

    check_neighbours(neighbours)
    _check_cluster_cap(max_cluster_maps)
    progress = resolve_progress(progress)

    spec = get_method(method)
    spec.bind(options)
    chosen = parse_audit_metrics(metrics, metric_options)
    out = Path(out)
    check_not_input(out, [data])
    check_grouping(data, group_by, detect_layout(data, layout))
    dataset = read_dataset(data, layout=layout, exclude=[out])
    if not dataset.entries:
        raise ConvlensError(no_images_message(data, dataset))
    check_output(out)  # before the model's work: a file in the way, no permission, a user's
    check_grouping(data, group_by, dataset.layout, dataset.entries)
    if dataset.layout != "plain":
        _check_labels(classifier, data, unknown_labels(dataset, classifier.labels or []))
    engine_options = dict(engine_options or {})
    if engine in (None, "local"):
        engine_options.setdefault("workers", workers)
    runner = get_engine(engine, **engine_options)
    height, width = classifier.preprocessing.input_size
    shape = (classifier.preprocessing.channels, height, width)
    layer_name = _map_layer(classifier, spec, layer, shape)
    feature_layer = layer_name if layer_name is not None else _feature_layer(classifier, shape)
    concept_layer, concept_rule = _concept_settings(classifier, concepts, spec, layer_name,
                                                    shape)
    settings = PassSettings(method=method, layer=layer_name, options=dict(options),
                            map_size=map_size, batch_size=batch_size, workers=workers,
                            metrics=chosen, feature_layer=feature_layer,
                            concept_layer=concept_layer, concept_rule=concept_rule)
    config = {"model": classifier.name,
              "model_fingerprint": model_fingerprint(classifier.module, classifier.labels,
                                                     classifier.preprocessing),
              "method": method, "layer": layer_name, "options": dict(options),
              "map_size": map_size, "group_by": group_by, "checks": checks, "seed": seed,
              # CPU kernels sum in an order that depends on the batch: probabilities differ
              # in the 6th digit between batch sizes, so a resume must keep the stored one.
              "batch_size": batch_size,
              # pooled activations for the cross-class strategies (convlens 10)
              "features": {"layer": feature_layer, "pool": "mean+max"}}
    if chosen:  # only when asked, so stores written without metrics keep their fingerprint
        config["metrics"] = config_entry(chosen)
    if concept_layer is not None:  # likewise: another concept layer or rule is refused
        config["concepts"] = {"layer": concept_layer, "rule": concept_rule}
    with claim_output(out, overwrite=overwrite, inputs=[data], what="convlens audit"):
        store_folder = out / STORE_FOLDER
        store = ResultStore(store_folder, config, overwrite=overwrite)
        outcome = run_pass(classifier, dataset, store, settings, progress=progress,
                           engine=runner)
        images = stored_images(store, outcome.keys)
        reader = MapReader(store)
        relative = {str(e.path): e.relpath for e in dataset.entries}
        errors = [{"path": dataset_relative_path(p.path, dataset.root, relative),
                   "reason": p.reason} for p in outcome.problems]
        errors = list({e["path"]: e for e in errors}.values())
        entries = {e.relpath: e for e in dataset.entries}

        checked = {r["key"]: r for r in store.records() if r.get("kind") == "check"}

        def causal(members: list[StoredImage], heat: np.ndarray, check_seed: int) -> CausalResult:
            """The causal check of one cluster through the pass's engine, or its stored result
            (a rerun does no forwards)."""
            chosen = members
            if len(members) > CHECK_MEMBERS:
                rng = np.random.default_rng(check_seed)
                chosen = [members[i] for i in np.sort(rng.choice(len(members), CHECK_MEMBERS,
                                                                 replace=False))]
            # "version" 3: the table of sizes, infills and controls, and the restored
            # mistakes; older "check" records, keyed without it, are not reused
            key = "check-" + config_fingerprint({"members": [m.record["key"] for m in members],
                                                 "seed": check_seed, "version": CHECK_VERSION})
            if key in checked:
                return CausalResult.from_dict(checked[key]["result"])
            result = run_check(runner, classifier, [entries[m.record["path"]] for m in chosen],
                               [m.record["key"] for m in chosen],
                               [m.record["predicted_index"] for m in chosen], heat,
                               seed=check_seed, batch_size=batch_size,
                               labels=[_mistake_label(m.record, classifier) for m in chosen])
            store.append([{"key": key, "kind": "check", "result": result.to_dict()}])
            return result

        header = {"model": classifier.name, "method": method, "layer": layer_name,
                  "feature_layer": feature_layer,
                  **({"concepts": concept_header(store, concept_layer)} if concept_layer
                     else {}),
                  "data": str(data), "layout": dataset.layout, "map_size": map_size,
                  "clustering": {"neighbours": neighbours, "max_maps": max_cluster_maps}}
        cards = None
        if chosen:
            cards = {m.key: card(m, method=method, layer=layer_name, model=classifier.name,
                                 images=len(images)) for m in chosen}
        content = build_audit(images, reader, header=header, errors=errors, group_by=group_by,
                              causal=causal, checks=checks, seed=seed, progress=progress,
                              metric_cards=cards,
                              spray_options={"neighbours": neighbours,
                                             "max_maps": max_cluster_maps})
        write_json_atomic(out / "audit.json", content)
        emit(progress, "done", 1, 1, f"wrote {out / 'audit.json'}")
        del content  # its image rows were made while written: read back when asked for
        return Audit(None, out, classifier=classifier, dataset=dataset, settings=settings,
                     store=store, engine=runner)


def _check_cluster_cap(max_cluster_maps: int | None) -> None:
    """Refuse a SpRAy cap that is not an integer of at least 100 (None: no cap)."""
    if max_cluster_maps is not None and (not isinstance(max_cluster_maps, int)
                                         or max_cluster_maps < 100):
        raise ConvlensError(f"max_cluster_maps must be an integer of at least 100 (or None for "
                            f"no cap), got {max_cluster_maps!r}")


def _check_labels(classifier: Classifier, data: Any, unknown: Sequence[str]) -> None:
    """Refuse labels of ``data`` the model does not know, listing the ones it does."""
    if unknown:
        valid = classifier.labels or []
        shown = ", ".join(valid[:40]) + (f", ... ({len(valid) - 40} more)"
                                          if len(valid) > 40 else "")
        raise LabelMismatchError(
            f"{len(unknown)} label(s) of {data} are not among the model's labels: "
            f"{', '.join(unknown)}; valid labels: {shown or '(the model has no labels)'}. "
            "Rename the folders (or CSV labels) to the model's class names, or pass "
            "--labels")


def _map_layer(classifier: Classifier, spec: Any, layer: str | None, shape: tuple[int, int, int]
               ) -> str | None:
    """The layer the audit's method reads (``layer`` or the model's default), or None for a
    method that reads no layer."""
    if not spec.needs_layer:
        return None
    return (resolve_layer(classifier.module, layer)[0] if layer is not None
            else classifier.default_layer(shape))


def _concept_settings(classifier: Classifier, concepts: bool | str | None, spec: Any,
                      layer_name: str | None, shape: tuple[int, ...]
                      ) -> tuple[str | None, str]:
    """The concept layer (resolved) and the rule asked of CRP: ``"gradient"`` when a gradient
    CAM's own layer is the concept layer (its capture gives gradient x activation for free),
    ``"auto"`` otherwise (LRP where the model has rules)."""
    if concepts is None or concepts is False:
        return None, "auto"
    if concepts is True:
        name = layer_name if layer_name is not None else classifier.default_layer(shape)
    elif isinstance(concepts, str) and concepts.strip():
        name = resolve_layer(classifier.module, concepts.strip())[0]
    else:
        raise ConvlensError(f"concepts must be True (the CAM layer, or the model's default "
                            f"layer), a layer's dotted name (see `convlens layers`) or None; "
                            f"got {concepts!r}")
    return name, "gradient" if spec.combine is not None and name == layer_name else "auto"


def concept_header(store: ResultStore, layer: str) -> dict[str, Any]:
    """``audit.json``'s ``concepts``: the layer, the rule the pass used (as the first shard
    that says it records it) and the layer's grid ``[h, w]``."""
    for shard in store.shards():
        for record in store.shard_records(shard):
            said = record.get("concepts")
            if isinstance(said, dict):
                return {"layer": layer, "rule": said.get("rule"), "grid": said.get("grid")}
    return {"layer": layer, "rule": None, "grid": None}


def _mistake_label(record: dict[str, Any], classifier: Classifier) -> int:
    """The labelled class index of a mistake (-1 for a correct or unlabelled prediction)."""
    if record.get("correct") is not False:
        return -1
    return (classifier.labels or []).index(record["label"]) \
        if record["label"] in (classifier.labels or []) else -1


def _feature_layer(classifier: Classifier, shape: tuple[int, ...]) -> str | None:
    """The layer whose pooled activations the pass records for a method without a layer:
    the model's default (last spatial) layer, or None when it has none."""
    try:
        return classifier.default_layer(shape)
    except LayerError:
        return None


def check_grouping(data: str | os.PathLike[str], group_by: str, layout: str,
                   entries: Sequence[Any] | None = None) -> None:
    """Refuse ``group_by="label"`` on data without labels, instead of an audit of nothing.

    From the layout alone (a plain folder has no labels; the CLI calls this before it
    loads the model) or, given the entries read, when none of them has a label (a CSV
    without a ``label`` column). Entries without a label among labelled ones are left out
    of the label groups, as they are of the accuracy.
    """
    if group_by != "label":
        return
    if layout == "plain" or (entries is not None and all(e.label is None for e in entries)):
        what = ("a plain folder of images, without labels" if layout == "plain"
                else "a CSV whose rows have no label")
        raise ConvlensError(
            f"group_by='label' (CLI: --group-by label) needs labelled data, but {data} is "
            f"{what}; give an ImageFolder tree (ROOT/CLASS/image files) or a CSV with "
            "path,label columns, or group by 'predicted'")


class Audit:
    """The result of :func:`audit`: the content of ``audit.json``, the report, a notebook view.

    Attributes:
        data: The ``audit.json`` content (a dict; schema in
            :func:`convlens.auditing.analysis.build_audit`), read from ``OUT/audit.json``
            when first used (the audit writes it row by row and does not keep it).
        out: The output folder.
    """

    def __init__(self, data: dict[str, Any] | None, out: Path, *,
                 classifier: Classifier | None = None,
                 dataset: Any = None, settings: PassSettings | None = None,
                 store: ResultStore | None = None, engine: Any = None) -> None:
        self._data = data
        self.engine = engine  # the pass's engine, which also computes the report's maps
        self.out = Path(out)
        self.classifier = classifier
        self.dataset = dataset
        self.settings = settings
        self.store = store

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = json.loads((self.out / "audit.json").read_text(encoding="utf-8"))
        return self._data

    @property
    def errors(self) -> list[dict[str, str]]:
        return self.data["errors"]

    @property
    def suspicious(self) -> list[dict[str, Any]]:
        return self.data["suspicious"]

    @property
    def images(self) -> list[dict[str, Any]]:
        return self.data["images"]

    def __repr__(self) -> str:
        strategies = self.data.get("strategies") or []
        top = strategies[0] if strategies else None
        lead = (f", most suspicious: strategy {top['id']} ({', '.join(top['groups'][:3])})"
                if top else "")
        return (f"Audit({len(self.images)} images, {len(self.errors)} errors, "
                f"accuracy={self.data.get('accuracy')}{lead})")

    def strategy_images(self, strategy: int) -> list[Path]:
        """The files of strategy ``strategy``'s members (ids as in ``audit.json``, 1 = the
        most suspicious), e.g. as a concept for TCAV, whose CAV convlens 12 projects out::

            cl.tcav(clf, concept=audit.strategy_images(1), images="data/")

        Member paths are relative to the audited folder (a CSV's folder), as the audit
        recorded them.
        """
        strategies = self.data.get("strategies") or []
        for entry in strategies:
            if entry.get("id") == strategy:
                root = Path(self.data.get("data") or ".")
                base = root if root.is_dir() else root.parent
                return [base / member for member in entry.get("members") or []]
        ids = ", ".join(str(entry.get("id")) for entry in strategies) or "none"
        raise ConvlensError(f"no strategy {strategy!r} in {self.out / 'audit.json'}; its "
                            f"strategies: {ids}")

    def report(self, path: str | os.PathLike[str] | None = None, *,
               progress: ProgressLike = None) -> Path:
        """Write the HTML report (default ``OUT/report.html``, thumbnails under ``OUT/``).

        ``progress`` as for :func:`audit` (stages ``report`` and, with concepts, ``concepts``).
        """
        progress = resolve_progress(progress)
        target = Path(path) if path is not None else self.out / "report.html"
        if target.parent.resolve() != self.out.resolve():
            return write_report(self, target, progress=progress)
        with claim_output(self.out, what="convlens audit"):
            return write_report(self, target, progress=progress)

    def _repr_html_(self) -> str:
        return notebook_html(self)
