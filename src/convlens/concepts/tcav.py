"""TCAV: does a concept chosen by a person push the model's decision for a class?

Testing with Concept Activation Vectors (Kim et al. 2018, "Interpretability Beyond Feature
Attribution", ICML): a concept is a handful of example images (stripes); its CAV is the
direction from random images to the concept's images in one layer's activation space
(:mod:`convlens.concepts.cav`). For an image ``x`` of class ``k`` the directional derivative
``S(x) = grad_k(x) . v`` says whether moving the layer's activation towards the concept raises
the class's logit; the TCAV score is the fraction of the class's images with ``S > 0``.

A single score means nothing on its own: a CAV fitted on random images also has a score, often
far from 0.5. So, as in the paper (Sec. 3.3), the concept is tested over ``runs`` random
counterexample sets, and the scores are compared with those of *random* CAVs (a random set
against another random set) by a two-sided t-test; the p-value says how likely scores this
far from the random ones would be if the concept were no more than a random direction.

How it is computed here (docs/architecture.md, "Concepts"):

* Images are decoded and preprocessed by the Classifier, forwards are batched, the layer's
  activation is captured by a scoped hook session (the model is left exactly as found).
* Only the images a run draws are forwarded for activations (the concept set and, per run,
  two disjoint random sets of the concept set's size: counterexamples and a random
  "concept"); every CAV is fitted in torch on the activations' device (no scikit-learn on a
  62,720-feature layer, the memory wall of Captum's TCAV, captum issue #930).
* The tested images are then forwarded once per batch with one backward per class, and each
  gradient is projected on all CAVs at once (one ``(batch, d) @ (d, cavs)`` product): only
  the signs are kept, so memory does not grow with the number of tested images.
* ``cav="both"`` fits the linear CAV and FastCAV (captum issue #1619) on the same sets and
  reports both.
* ``significant`` uses a Bonferroni correction over classes x layers (the hypotheses tested
  in one call): ``p < alpha / (classes * layers)``; the threshold is recorded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convlens._hooks import HookSession, evaluation_mode, gradients_enabled
from convlens.concepts.cav import CAV_KINDS, cav_weights, row_gram
from convlens.errors import ConceptError, LayerError, TargetError, did_you_mean
from convlens.files import write_json_atomic
from convlens.io.datasets import read_dataset
from convlens.io.images import is_image_file
from convlens.models.classifier import Classifier, ModelLike, as_classifier
from convlens.models.layers import resolve_layer
from convlens.progress import ProgressLike, emit, resolve_progress

MAX_DEFAULT_CLASSES = 10  # classes tested when none are named and the images have no labels


# ---------------------------------------------------------------------------- image sets


@dataclass
class _ImageSet:
    """Images given as a folder, CSV, list or tensor, before decoding.

    ``items`` are paths or in-memory images, or ``None`` when ``tensor`` holds the
    preprocessed batch; ``labels`` come from an ImageFolder tree or a CSV.
    """

    source: str
    items: list[Any]
    tensor: torch.Tensor | None = None
    labels: list[str] | None = None
    identities: list[Path | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items) if self.tensor is None else int(self.tensor.shape[0])

    def subset(self, keep: Sequence[int], source: str) -> _ImageSet:
        """The images at positions ``keep`` (labels dropped)."""
        index = list(keep)
        if self.tensor is not None:
            return _ImageSet(source, [], self.tensor[index], None, [None] * len(index))
        return _ImageSet(source, [self.items[i] for i in index], None, None,
                         [self.identities[i] for i in index])


def _identity(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _gather(source: Any, what: str) -> _ImageSet:
    """Read ``source`` (folder, ImageFolder tree, CSV, image file, list, tensor) as a set."""
    if isinstance(source, torch.Tensor):
        if source.dim() != 4:
            raise ConceptError(f"{what} as a tensor must be a preprocessed batch (N, C, H, W); "
                               f"got shape {tuple(source.shape)}")
        return _ImageSet(f"tensor of {source.shape[0]} images", [], source, None,
                         [None] * source.shape[0])
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.fsdecode(os.fspath(source)))
        if path.is_file() and is_image_file(path):
            return _ImageSet(str(path), [path], None, None, [_identity(path)])
        dataset = read_dataset(path)  # a missing path is one ConvlensError line
        entries = dataset.entries
        if not entries:
            raise ConceptError(f"{what} {path}: no images found (expected image files in the "
                               "folder or its sub-folders, or a CSV with path,label columns)")
        labels = [e.label for e in entries] if dataset.layout in ("imagefolder", "csv") else None
        if labels is not None and any(label is None for label in labels):
            labels = None
        return _ImageSet(str(path), [e.path for e in entries], None, labels,
                         [_identity(e.path) for e in entries])
    if isinstance(source, (list, tuple)):
        if not source:
            raise ConceptError(f"{what}: the list of images is empty")
        identities = [_identity(Path(os.fsdecode(os.fspath(item))))
                      if isinstance(item, (str, os.PathLike)) else None for item in source]
        return _ImageSet(f"{len(source)} images", list(source), None, None, identities)
    raise ConceptError(f"{what} must be a folder, a CSV file, a list of image paths or images, "
                       f"or a preprocessed tensor (N, C, H, W); got {type(source).__name__}")


def _batches(classifier: Classifier, images: _ImageSet, positions: Sequence[int],
             batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """``(positions, x)`` per batch: decoded and preprocessed by the Classifier, on its device."""
    positions = list(positions)
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        if images.tensor is not None:
            x = images.tensor[chunk].to(classifier.device)
        else:
            x = classifier.preprocess([images.items[i] for i in chunk])
        yield chunk, x


# --------------------------------------------------------------------------- the result


@dataclass
class TCAVResult:
    """What :func:`tcav` found: one row per layer, class and CAV kind, and the CAVs.

    Attributes:
        rows: ``{"class", "class_index", "layer", "cav", "score", "score_std",
            "random_score", "random_score_std", "p_value", "significant", "runs", "images",
            "scores", "random_scores"}`` per layer, class and CAV kind; ``score`` is the mean
            TCAV score over the runs, ``scores`` the per-run values.
        cavs: ``{layer: {kind: tensor (runs, C, H, W)}}``: the concept's unit CAVs, one per
            random counterexample set, on the activations' device (project them out of
            the layer's activations to remove the concept).
        concept: Where the concept's images came from.
        alpha, threshold: The significance level and its Bonferroni-corrected threshold
            ``alpha / (classes x layers)`` that ``significant`` uses.
        settings: Runs, set sizes, seed, layers, classes.
    """

    rows: list[dict[str, Any]]
    cavs: dict[str, dict[str, torch.Tensor]]
    concept: str
    alpha: float
    threshold: float
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data (the CAVs are left out: tensors, not JSON)."""
        return {"concept": self.concept, "alpha": self.alpha, "threshold": self.threshold,
                "correction": "bonferroni over classes x layers", **self.settings,
                "rows": [dict(row) for row in self.rows]}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` (atomically); returns the path."""
        return write_json_atomic(path, self.to_json())

    def table(self) -> str:
        """A plain-text table: class, layer, cav, score, random score, p-value, significant."""
        header = ("class", "layer", "cav", "score", "random", "p-value", "significant")
        lines = [header] + [
            (row["class"], row["layer"], row["cav"],
             f"{row['score']:.3f} +- {row['score_std']:.3f}",
             f"{row['random_score']:.3f} +- {row['random_score_std']:.3f}",
             format_p(row["p_value"]), "yes" if row["significant"] else "no")
            for row in self.rows]
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip()
                         for line in lines)

    def verdict(self) -> str:
        """One sentence: for which classes the concept is significant, under which CAV, and
        whether it raises the class's logit (score above the random CAVs') or lowers it."""
        def named(row: dict[str, Any]) -> str:
            way = "raises" if row["score"] > row["random_score"] else "lowers"
            return (f"{row['class']} ({way} it: score {row['score']:.2f} against "
                    f"{row['random_score']:.2f} at random; {row['cav']}, layer "
                    f"{row['layer']}, p={format_p(row['p_value'])})")

        found = [named(row) for row in self.rows if row["significant"]]
        if not found:
            return (f"the concept is not significant for any class tested (p >= "
                    f"{self.threshold:.3g}, Bonferroni over classes x layers, "
                    f"{self.settings['runs']} random runs)")
        return (f"the concept is significant (p < {self.threshold:.3g}) for: "
                + "; ".join(found))

    def __repr__(self) -> str:
        return f"TCAVResult(concept={self.concept!r})\n{self.table()}\n{self.verdict()}"


def format_p(p: float) -> str:
    """A p-value for a table: 3 significant digits, small values in scientific notation."""
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


# ---------------------------------------------------------------------------- the test


def _kinds(cav: str) -> tuple[str, ...]:
    if cav == "both":
        return CAV_KINDS
    if cav in CAV_KINDS:
        return (cav,)
    raise ConceptError(f"unknown cav {cav!r}; accepted: linear (logistic regression), fastcav "
                       "(mean difference) or both")


def _layers(classifier: Classifier, layer: Any, sample_shape: Sequence[int]
            ) -> list[tuple[str, Any]]:
    if layer is None:
        layer = classifier.default_layer(tuple(sample_shape))
    names = [layer] if isinstance(layer, (str, torch.nn.Module)) else list(layer)
    if not names:
        raise LayerError("layer: an empty list; pass a layer name (see `convlens layers`)")
    return [resolve_layer(classifier.module, name) for name in names]


def _class_index(item: Any, classifier: Classifier, outputs: int) -> int:
    labels = classifier.labels
    if isinstance(item, str) and not item.strip().lstrip("-").isdigit():
        if labels is None:
            raise TargetError(f"class {item!r} is a name but the model has no labels; pass an "
                              "index, or load the model with its labels")
        if item not in labels:
            raise TargetError(f"unknown class {item!r}{did_you_mean(item, labels)} (the model "
                              f"has {len(labels)} classes; see its labels file)")
        return labels.index(item)
    try:
        index = int(item)
    except (TypeError, ValueError):
        raise TargetError(f"a class must be a name or an index, got {item!r}") from None
    if not 0 <= index < outputs:
        raise TargetError(f"class index {index} is out of range; the model has {outputs} "
                          f"outputs (0 to {outputs - 1})")
    return index


def _r(value: Any) -> float:
    return round(float(value), 6)


def _checked(capture: Any) -> torch.Tensor:
    """The captured output, refused unless it is ``(N, C, H, W)``."""
    output = capture.output
    if output.dim() != 4:
        raise LayerError(f"layer {capture.name!r} gives an output of shape "
                         f"{tuple(output.shape)}; TCAV needs a layer with a spatial (N, C, H, W) "
                         "output (see `convlens layers`)")
    return output


def _requested(classes: Any) -> list[Any] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = [part.strip() for part in classes.split(",") if part.strip()]
    elif not isinstance(classes, (list, tuple)):
        classes = [classes]
    if not classes:
        raise TargetError("classes: none given; pass class names or indices, e.g. zebra,horse")
    return list(dict.fromkeys(classes))


def _class_groups(classifier: Classifier, tested: _ImageSet, classes: Any, batch_size: int
                  ) -> tuple[int, list[tuple[list[int], list[int]]], list[int]]:
    """The model's output count, ``(image positions, class indices)`` groups, the classes.

    Labelled images (ImageFolder, CSV): one group per class, its own images. Unlabelled: one
    group, all images for every class; without ``classes`` the most frequent predictions.
    """
    from collections import Counter

    requested = _requested(classes)
    labels = tested.labels
    everything = list(range(len(tested)))
    predictions: list[int] = []
    if not classifier.labels or (requested is None and labels is None):
        first = everything if requested is None and labels is None else everything[:1]
        for _, x in _batches(classifier, tested, first, batch_size):
            logits = classifier.logits(x)
            predictions += logits.argmax(dim=1).tolist()
            outputs = int(logits.shape[1])
    else:
        outputs = len(classifier.labels)
    if requested is None and labels is None:
        indices = [k for k, _ in Counter(predictions).most_common(MAX_DEFAULT_CLASSES)]
    elif requested is None:
        names = sorted(set(labels))
        unknown = [n for n in names if not classifier.labels or n not in classifier.labels]
        if unknown:
            hint = did_you_mean(unknown[0], classifier.labels or [])
            raise TargetError(f"images {tested.source}: label {unknown[0]!r} is not a class "
                              f"of the model{hint}; name the folders (or CSV labels) after "
                              "the model's classes, or pass classes=")
        indices = sorted(classifier.labels.index(n) for n in names)
    else:
        indices = [_class_index(item, classifier, outputs) for item in requested]
    indices = list(dict.fromkeys(indices))
    if labels is None:
        return outputs, [(everything, indices)], indices
    groups = []
    for k in indices:
        rows = [i for i, label in enumerate(labels) if label == classifier.label(k)]
        if not rows:
            raise ConceptError(
                f"class {classifier.label(k)!r} has no images in {tested.source} (its images "
                f"are the folder or CSV label of that name; labels found: "
                f"{', '.join(sorted(set(labels))[:10])})")
        groups.append((rows, [k]))
    return outputs, groups, indices


def _draws(pool: int, size: int, runs: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Per run ``(counterexamples, random concept)``: two disjoint sets of ``size`` positions
    in the random pool, drawn afresh each run with ``seed``.

    A random concept drawn once and kept for every run (as the concept's own set is kept)
    was tried and rejected: the baseline then measured one arbitrary random set, and on the
    planted model both the planted concept's power and the random concept's false alarms
    got worse (docs/architecture.md, "Concepts").
    """
    generator = torch.Generator().manual_seed(int(seed))
    draws = []
    for _ in range(runs):
        order = torch.randperm(pool, generator=generator)[:2 * size].tolist()
        draws.append((order[:size], order[size:]))
    return draws


def _p_value(scores: torch.Tensor, random_scores: torch.Tensor) -> float:
    """Two-sided t-test (scipy's ``ttest_ind``, equal variances, as Kim et al.).

    When both sides have zero variance the t statistic is undefined: p is 1.0 when the
    means are equal and 0.0 when they differ (every run gave the same, different score).
    """
    import warnings

    from scipy.stats import ttest_ind

    a, b = scores.double().cpu().numpy(), random_scores.double().cpu().numpy()
    if a.std() == 0 and b.std() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    with warnings.catch_warnings():  # "precision loss" when one side is constant: handled
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_ind(a, b).pvalue)


def _activations(classifier: Classifier, layers: list[tuple[str, Any]], images: _ImageSet,
                 positions: Sequence[int], batch_size: int,
                 shapes: dict[str, tuple[int, ...]]) -> list[torch.Tensor]:
    """Per layer, the flattened float32 activations ``(len(positions), d)`` (no gradients);
    each layer's ``(C, H, W)`` goes into ``shapes``."""
    parts: list[list[torch.Tensor]] = [[] for _ in layers]
    with HookSession() as hooks, torch.no_grad():
        captures = [hooks.capture(module, name) for name, module in layers]
        for _, x in _batches(classifier, images, positions, batch_size):
            classifier(x)
            for part, capture in zip(parts, captures):
                output = _checked(capture)
                shapes[capture.name] = tuple(output.shape[1:])
                part.append(output.detach().flatten(1).float())
                capture.clear()
    return [torch.cat(part) for part in parts]


def _fit_cavs(rows: torch.Tensor, n_concept: int,
              draws: list[tuple[list[int], list[int]]], kinds: Sequence[str]) -> torch.Tensor:
    """Every CAV of one layer as the columns of a ``(d, kinds x 2 x runs)`` matrix.

    ``rows``: the concept's activations, then the drawn pool's; ``draws``: per run the rows
    of the counterexamples and of the random concept. Per kind, the runs' concept CAVs
    (concept vs. counterexamples), then their random CAVs (random concept vs. the same). The
    Gram matrix of all rows is computed once; each fit works on its ``n x n`` block and
    returns weights on its rows, and one product ``rows.T @ weights`` makes every CAV.
    """
    gram = row_gram(rows)
    concept = list(range(n_concept))
    fits = [(concept, negatives) for negatives, _ in draws] + [
        (positives, negatives) for negatives, positives in draws]
    weights = torch.zeros(rows.shape[0], len(kinds) * len(fits), dtype=torch.float64,
                          device=rows.device)
    column = 0
    for kind in kinds:
        for positive, negative in fits:
            index = torch.tensor(positive + negative, device=rows.device)
            block = gram[index][:, index]
            weights[index, column] = cav_weights(kind, block, len(positive))
            column += 1
    cavs = rows.T @ weights.to(rows.dtype)
    norms = cavs.norm(dim=0)
    return cavs / torch.where(norms > 0, norms, torch.ones_like(norms))


def _positive_counts(classifier: Classifier, layers: list[tuple[str, Any]], tested: _ImageSet,
                     groups: list[tuple[list[int], list[int]]], cav_columns: list[torch.Tensor],
                     batch_size: int) -> tuple[dict[int, list[torch.Tensor]], dict[int, int]]:
    """Per class and layer, how many tested images have ``grad_k . v > 0``, per CAV column;
    and how many images each class was tested on.

    One forward per batch and one backward per class. With one layer, autograd starts at
    the layer (``grad_from_here``: the forward below it records nothing); with several the
    graph runs from the input, so that each layer's gradient sees the layers above it.
    """
    single = len(layers) == 1
    classes = [k for _, wanted in groups for k in wanted]
    positive = {k: [torch.zeros(cols.shape[1], device=cols.device) for cols in cav_columns]
                for k in classes}
    counted = dict.fromkeys(classes, 0)
    with HookSession() as hooks:
        captures = [hooks.capture(module, name, cut_graph=single, grad_from_here=single)
                    for name, module in layers]
        for positions, wanted in groups:
            for _, x in _batches(classifier, tested, positions, batch_size):
                with gradients_enabled():
                    if single:
                        with torch.no_grad():  # one block per forward: it restores the mode
                            logits = classifier(x)
                    else:
                        logits = classifier(x.detach().requires_grad_(True))
                    acts = [_checked(capture) for capture in captures]
                    for at, k in enumerate(wanted):
                        grads = torch.autograd.grad(logits[:, k].sum(), acts,
                                                    retain_graph=at < len(wanted) - 1)
                        for count, grad, cols in zip(positive[k], grads, cav_columns):
                            count += (grad.detach().flatten(1).float() @ cols > 0).sum(dim=0)
                        counted[k] += x.shape[0]
                for capture in captures:
                    capture.clear()
    return positive, counted


def tcav(model: ModelLike, concept: Any, layer: str | Sequence[str] | None = None,
         classes: Sequence[str | int] | str | int | None = None, *, images: Any = None,
         random: Any = None, runs: int = 10, cav: str = "both", alpha: float = 0.05,
         seed: int = 0, batch_size: int = 32, progress: ProgressLike = None) -> TCAVResult:
    """Test a concept's influence on class decisions (TCAV, Kim et al. 2018) with p-values.

    Args:
        model: A Classifier (or an ``nn.Module``, wrapped with the ImageNet preprocessing).
        concept: The concept's example images: a folder, a list of image paths or PIL
            images, or a preprocessed tensor ``(N, C, H, W)``; at least 2. The members of an
            audit strategy work too: ``concept=audit.strategy_images(1)``.
        layer: A layer name (or a list of names); default the model's default layer (the
            last with a spatial output). The layer's output must be ``(N, C, H, W)``.
        classes: Class names or indices (a list, or ``"a,b"``); default the classes present
            in ``images`` (ImageFolder / CSV labels), else the model's most frequent
            predictions on them (at most 10).
        images: The images whose decisions are tested: an ImageFolder tree or a CSV (a
            class's score uses that class's images), a plain folder, a list or a tensor
            (every class's score uses all of them).
        random: Random counterexamples (a folder, list or tensor); default ``images``
            without the concept's files. Each run draws, with ``seed``, two disjoint sets of
            the concept set's size (half the pool if smaller): the counterexamples and a
            random "concept" for the baseline.
        runs: Random runs (Kim et al. use at least 10); at least 2.
        cav: ``"linear"`` (logistic regression), ``"fastcav"`` (mean difference) or
            ``"both"``.
        alpha: Significance level, Bonferroni-corrected over classes x layers.
        seed: Seeds the random draws (the CAV fits are deterministic).
        batch_size: Images per forward.
        progress: A callback given a ``tcav`` event per pass over images (the tested
            images' predictions, the concept's and the random pool's activations, the
            directional derivatives: ``total`` 4), ``True`` (plain lines, or a bar in a
            notebook) or ``False``/None (see :func:`convlens.progress.resolve_progress`).

    Returns:
        A :class:`TCAVResult`: ``rows`` with ``class``, ``layer``, ``score``, ``p_value``...

    Raises:
        ConceptError: an empty or too small set, a class without images.
        TargetError: an unknown class. LayerError: an unknown layer or one without a spatial
            output.

    Example:
        >>> result = tcav(clf, "examples/stripes/", classes=["zebra"],       # doctest: +SKIP
        ...               images="photos/", random="random/")
        >>> result.rows[0]["score"], result.rows[0]["p_value"]             # doctest: +SKIP
        (0.93, 2.1e-07)
    """
    classifier = as_classifier(model)
    progress = resolve_progress(progress)
    kinds = _kinds(cav)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 2:
        raise ConceptError(f"runs must be an integer of at least 2 (a t-test needs several "
                           f"random runs; Kim et al. use 10 or more); got {runs!r}")
    if not 0 < alpha < 1:
        raise ConceptError(f"alpha must lie between 0 and 1 (e.g. 0.05); got {alpha!r}")
    if images is None:
        raise ConceptError("tcav needs images=: the images whose class decisions are tested "
                           "(a folder, ImageFolder tree, CSV, list or tensor)")
    concept_set = _gather(concept, "concept")
    if len(concept_set) < 2:
        raise ConceptError(f"concept {concept_set.source}: {len(concept_set)} image(s); a CAV "
                           "needs at least 2 (10 to 50 are typical)")
    tested = _gather(images, "images")
    if random is not None:
        pool = _gather(random, "random")
    else:
        taken = {i for i in concept_set.identities if i is not None}
        keep = [k for k, ident in enumerate(tested.identities)
                if ident is None or ident not in taken]
        pool = tested.subset(keep, f"{tested.source} (without the concept's images)")
    size = min(len(concept_set), len(pool) // 2)
    if size < 2:
        raise ConceptError(
            f"random {pool.source}: {len(pool)} image(s); each run draws two disjoint random "
            "sets of at least 2 images, so at least 4 are needed (pass random= with more "
            "images, ideally several times the concept set's size)")
    sample = (tested.tensor.shape[1:] if tested.tensor is not None
              else classifier.sample_shape)
    layers = _layers(classifier, layer, sample)

    draws = _draws(len(pool), size, runs, seed)
    drawn = sorted({p for pair in draws for part in pair for p in part})
    row_of = {p: k for k, p in enumerate(drawn)}

    emit(progress, "tcav", 0, 4, f"predictions on {len(tested)} image(s)")
    outputs, groups, class_indices = _class_groups(classifier, tested, classes, batch_size)
    with evaluation_mode(classifier.module):
        shapes: dict[str, tuple[int, ...]] = {}
        emit(progress, "tcav", 1, 4, f"activations of {len(concept_set)} concept image(s)")
        concept_acts = _activations(classifier, layers, concept_set, range(len(concept_set)),
                                    batch_size, shapes)
        emit(progress, "tcav", 2, 4, f"activations of {len(drawn)} random image(s)")
        pool_acts = _activations(classifier, layers, pool, drawn, batch_size, shapes)
        cav_columns, concept_cavs = [], {}
        for (name, _), concept_a, pool_a in zip(layers, concept_acts, pool_acts):
            columns = _fit_cavs(torch.cat([concept_a, pool_a]), len(concept_set),
                                [([len(concept_set) + row_of[p] for p in negatives],
                                  [len(concept_set) + row_of[p] for p in positives])
                                 for negatives, positives in draws], kinds)
            cav_columns.append(columns)  # (d, kinds x (runs concept, runs random))
            concept_cavs[name] = {
                kind: columns[:, at * 2 * runs:at * 2 * runs + runs].T.reshape(
                    runs, *shapes[name]) for at, kind in enumerate(kinds)}
        del concept_acts, pool_acts
        emit(progress, "tcav", 3, 4, "directional derivatives")
        positive, counted = _positive_counts(classifier, layers, tested, groups, cav_columns,
                                             batch_size)
        emit(progress, "tcav", 4, 4, f"{runs} runs x {len(layers)} layer(s) scored")

    rows = []
    tests = len(class_indices) * len(layers)
    threshold = alpha / tests
    for (name, _), layer_at in zip(layers, range(len(layers))):
        for k in class_indices:
            fractions = (positive[k][layer_at] / counted[k]).cpu()
            for at, kind in enumerate(kinds):
                block = fractions[at * 2 * runs:(at + 1) * 2 * runs]
                scores, random_scores = block[:runs], block[runs:]
                p = _p_value(scores, random_scores)
                rows.append({
                    "class": classifier.label(k), "class_index": k, "layer": name, "cav": kind,
                    "score": _r(scores.mean()), "score_std": _r(scores.std()),
                    "random_score": _r(random_scores.mean()),
                    "random_score_std": _r(random_scores.std()),
                    "p_value": p, "significant": p < threshold, "runs": runs,
                    "images": counted[k],
                    "scores": [_r(s) for s in scores],
                    "random_scores": [_r(s) for s in random_scores]})
    settings = {"runs": runs, "seed": int(seed), "concept_images": len(concept_set),
                "random_set_size": size, "random_pool": pool.source,
                "random_pool_images": len(pool), "images": tested.source,
                "layers": [name for name, _ in layers],
                "classes": [classifier.label(k) for k in class_indices],
                "cavs": list(kinds), "outputs": outputs}
    return TCAVResult(rows, concept_cavs, concept_set.source, alpha, threshold, settings)
