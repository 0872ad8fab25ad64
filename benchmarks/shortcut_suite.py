"""The planted-shortcut suite (convlens 10, item 1): does an audit find a shortcut we planted?

Each :class:`Scenario` plants one artefact (a corner tag, a text overlay, a frame, a colour
cast, a background texture or a small object) on a share of one or two classes' TRAINING
images of synthetic shapes (circle, square, triangle, ring on a noisy background, as in
tests/planted_bias.py). A tiny CNN trained on them (seeded, a few seconds on a CPU, its
weights cached) learns the shortcut. The TEST folder (ImageFolder, PNGs; artefact files end
in ``-art``) holds clean images of every class, artefact images of the target class(es) and
artefact images of one or of every other class, which the shortcut turns into mistakes.

Three methods then rank clusters of the same stored Grad-CAM maps (32 x 32):

* ``audit``: ``cl.audit``: its ``audit.json`` top-level ``strategies`` list in order when
  it has one (the cross-class audit), else today's ``suspicious`` list in order.
* ``spray``: plain per-class SpRAy as in Lapuschkin et al. 2019 (maps of each predicted
  class, divided by their sum; a binary 10-NN graph, symmetrised; the symmetric normalised
  Laplacian; the number of clusters from the largest eigengap over k >= 2 (at most 8);
  k-means on the first k eigenvectors), all classes' clusters ranked by their number of
  mistakes (size x error rate), ties by error rate.
* ``mistakes``: the same spectral clustering on the misclassified images only, pooled over
  classes, clusters ranked by size.

Per scenario and method: the rank of the first cluster whose members are at least half
artefact images, its recall (share of all artefact test images it holds) and purity; for the
audit also the causal margin (flip rate - random flip rate of the cluster's causal check,
when the audit checked it) with a 95 % interval (Newcombe's hybrid score interval for a
difference of proportions, treating the two rates as independent: conservative for paired
covers). The bundled pretrained model with overlays drawn on photos (no training) is in
benchmarks/shortcut_photos.py, run by ``--photos``.

Run::

    python benchmarks/shortcut_suite.py               # every scenario, seed 0
    python benchmarks/shortcut_suite.py --quick       # 4 scenarios
    python benchmarks/shortcut_suite.py --seeds 1,2   # held-out seeds
    python benchmarks/shortcut_suite.py --out benchmarks/results/shortcut_suite_cpu.md
    python benchmarks/shortcut_suite.py --photos      # the real-model cases (photos)

The generator (:func:`scenarios`, :func:`make_split`) and the scoring (:func:`score_ranked`,
:func:`score_audit`) are importable by tests; nothing here is under src/.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

CLASSES = ("circle", "square", "triangle", "ring")
KINDS = ("corner_tag", "text", "frame", "colour_cast", "texture", "small_object")
SHARES = (0.2, 0.5, 1.0)
SIZE = 32
TRAIN_PER_CLASS = 200
TEST_CLEAN_PER_CLASS = 40
TEST_ART_TARGET = 20     # artefact images of each target class in the test folder
TEST_ART_SOURCES = 40    # artefact images of the other classes (split over the sources)
EPOCHS = 8
MOSTLY = 0.5             # a cluster "is" the artefact strategy when >= half its members are
CACHE_VERSION = "suite-v1"
ARTEFACT_SUFFIX = "-art"

# (share, position, targets, error_sources): eight combinations per artefact kind, so that
# every level of every axis appears for every kind (6 kinds x 8 = 48 scenarios).
_COMBINATIONS = (
    (0.2, "fixed", 1, "one"), (0.2, "varying", 2, "many"),
    (0.5, "fixed", 1, "many"), (0.5, "varying", 1, "one"),
    (0.5, "fixed", 2, "one"), (1.0, "fixed", 1, "one"),
    (1.0, "varying", 1, "many"), (1.0, "fixed", 2, "many"),
)


@dataclass(frozen=True)
class Scenario:
    """One planted shortcut.

    Attributes:
        kind: The artefact (one of :data:`KINDS`).
        share: Share of each target class's training images that carry it (0.2 to 1.0).
        position: ``"fixed"`` (same place and look on every image) or ``"varying"`` (a random
            place, or for the frame / cast / texture a random thickness, strength or phase).
        targets: How many classes carry it in training (1 or 2; with 2, each target class has
            its own variant of the artefact, so mistakes spread into two classes).
        error_sources: ``"one"`` (the test folder's artefact images of other classes all come
            from one class) or ``"many"`` (from every non-target class).
        seed: Seeds the images, the training and the audit.
    """

    kind: str
    share: float
    position: str
    targets: int
    error_sources: str
    seed: int = 0

    @property
    def name(self) -> str:
        return (f"{self.kind}-{int(self.share * 100)}-{self.position}-t{self.targets}-"
                f"{self.error_sources}-s{self.seed}")

    @property
    def target_classes(self) -> tuple[str, ...]:
        """The classes that carry the artefact in training (rotated by kind, so every class
        is a target somewhere)."""
        start = (KINDS.index(self.kind) + self.seed) % len(CLASSES)
        return tuple(CLASSES[(start + k) % len(CLASSES)] for k in range(self.targets))

    @property
    def source_classes(self) -> tuple[str, ...]:
        """Non-target classes whose test images carry the artefact (the mistakes' origin)."""
        others = [c for c in CLASSES if c not in self.target_classes]
        return tuple(others[:1]) if self.error_sources == "one" else tuple(others)


def scenarios(seed: int = 0) -> list[Scenario]:
    """Every scenario of the suite for ``seed`` (48: 6 artefact kinds x 8 combinations of
    share, position, number of target classes and error sources)."""
    return [Scenario(kind, share, position, targets, sources, seed)
            for kind, (share, position, targets, sources) in itertools.product(KINDS,
                                                                                _COMBINATIONS)]


def quick_scenarios(seed: int = 0) -> list[Scenario]:
    """A small subset for ``--quick``: four kinds, four different combinations."""
    chosen = scenarios(seed)
    wanted = [("corner_tag", 0), ("text", 3), ("frame", 5), ("small_object", 1)]
    return [chosen[KINDS.index(kind) * len(_COMBINATIONS) + k] for kind, k in wanted]


FAST_SEED = 3
FAST_NAMES = ("corner_tag-20-varying-t2-many", "text-20-fixed-t1-one", "frame-20-fixed-t1-one",
              "colour_cast-20-fixed-t1-one", "texture-20-fixed-t1-one",
              "small_object-100-fixed-t1-one")
"""The fast subset ``make test`` runs (tests/auditing/test_shortcut_suite.py): seed 3, held
out from the tuning (seed 0), and per artefact kind the first of its 8 combinations whose
model learned the shortcut (shortcut rate >= 0.5), chosen from that seed's run of the audit
before convlens 10, which ranked the shortcut first in 3 of the 6."""


def fast_scenarios() -> list[Scenario]:
    """The fast subset (:data:`FAST_NAMES` at :data:`FAST_SEED`)."""
    chosen = {s.name: s for s in scenarios(FAST_SEED)}
    return [chosen[f"{name}-s{FAST_SEED}"] for name in FAST_NAMES]


# ----------------------------------------------------------------------------- images

_GLYPHS = {  # 3 x 5 pixel letters for the text overlay
    "C": ["111", "100", "100", "100", "111"], "L": ["100", "100", "100", "100", "111"],
    "X": ["101", "101", "010", "101", "101"], "Z": ["111", "001", "010", "100", "111"],
}
_WORDS = ("CL", "XZ")                               # variant 0 and 1
_TAG_COLOURS = ((255, 255, 255), (60, 240, 255))
_FRAME_COLOURS = ((230, 230, 60), (230, 60, 230))
_OBJECT_COLOURS = ((255, 50, 50), (50, 255, 50))
_CASTS = ((1.45, 1.0, 0.6), (0.6, 1.0, 1.45))


def _shape_mask(kind: str, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    r = rng.uniform(7, 9)
    cy, cx = rng.uniform(r + 3, SIZE - r - 3), rng.uniform(r + 3, SIZE - r - 3)
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    if kind == "circle":
        return d2 <= r * r
    if kind == "ring":
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == "square":
        return (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
    top, base = cy - r, cy + r * 0.8
    half = (yy - top) / (base - top) * r
    return (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)


def _place(rng: np.random.Generator, h: int, w: int, fixed: tuple[int, int] | None
           ) -> tuple[int, int]:
    if fixed is not None:
        return fixed
    return int(rng.integers(1, SIZE - h)), int(rng.integers(1, SIZE - w))


def plant(image: np.ndarray, kind: str, variant: int, position: str,
          rng: np.random.Generator) -> np.ndarray:
    """Draw artefact ``kind`` (variant 0 or 1) on a float ``(32, 32, 3)`` image in place."""
    fixed = position == "fixed"
    if kind == "corner_tag":
        side = 5
        if fixed:
            y, x = SIZE - 1 - side, SIZE - 1 - side
        else:
            corner = int(rng.integers(4))
            y = 1 if corner < 2 else SIZE - 1 - side
            x = 1 if corner % 2 == 0 else SIZE - 1 - side
        image[y:y + side, x:x + side] = _TAG_COLOURS[variant]
    elif kind == "text":
        word = _WORDS[variant]
        y, x = _place(rng, 5, 4 * len(word), (1, 1) if fixed else None)
        for k, letter in enumerate(word):
            glyph = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]])
            patch = image[y:y + 5, x + 4 * k:x + 4 * k + 3]
            patch[glyph] = 245
    elif kind == "frame":
        width = 2 if fixed else int(rng.integers(1, 4))
        colour = np.asarray(_FRAME_COLOURS[variant], dtype=np.float64)
        if not fixed:
            colour = np.clip(colour + rng.normal(0, 20, 3), 0, 255)
        image[:width] = colour
        image[-width:] = colour
        image[:, :width] = colour
        image[:, -width:] = colour
    elif kind == "colour_cast":
        strength = 1.0 if fixed else float(rng.uniform(0.5, 1.0))
        gains = 1.0 + strength * (np.asarray(_CASTS[variant]) - 1.0)
        image *= gains
    elif kind == "texture":
        yy, xx = np.mgrid[:SIZE, :SIZE]
        phase = 0 if fixed else int(rng.integers(4))
        lines = (xx + yy + phase) if variant == 0 else (yy + phase)
        stripes = (lines % 4) < 2
        background = image.mean(axis=2) < 90          # only the dark background
        image[stripes & background] += 70
    elif kind == "small_object":
        y, x = _place(rng, 4, 4, (1, SIZE - 5) if fixed else None)
        plus = np.array([[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]], bool)
        image[y:y + 4, x:x + 4][plus] = _OBJECT_COLOURS[variant]
    else:
        raise ValueError(f"unknown artefact kind {kind!r}; known: {', '.join(KINDS)}")
    return image


def draw(shape: str, artefact: tuple[str, int, str] | None, rng: np.random.Generator
         ) -> np.ndarray:
    """One uint8 RGB image: ``shape`` on a noisy dark background, with ``artefact``
    ``(kind, variant, position)`` planted on it when given."""
    image = rng.normal(40, 12, (SIZE, SIZE, 3))
    image[_shape_mask(shape, rng)] = rng.uniform(110, 170, 3)
    if artefact is not None:
        plant(image, artefact[0], artefact[1], artefact[2], rng)
    return np.clip(image, 0, 255).astype(np.uint8)


@dataclass
class Split:
    """Images ``(N, 32, 32, 3)`` uint8, class indices ``(N,)`` and artefact flags ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray
    artefact: np.ndarray
    variants: list[int] = field(default_factory=list)


def _counts(scenario: Scenario, train: bool) -> list[tuple[str, int | None, int]]:
    """``(class, variant or None, count)`` rows of one split."""
    targets = scenario.target_classes
    rows: list[tuple[str, int | None, int]] = []
    if train:
        for name in CLASSES:
            if name in targets:
                tagged = int(round(scenario.share * TRAIN_PER_CLASS))
                rows += [(name, targets.index(name), tagged),
                         (name, None, TRAIN_PER_CLASS - tagged)]
            else:
                rows.append((name, None, TRAIN_PER_CLASS))
        return rows
    for name in CLASSES:
        rows.append((name, None, TEST_CLEAN_PER_CLASS))
        if name in targets:
            rows.append((name, targets.index(name), TEST_ART_TARGET))
    sources = scenario.source_classes
    for name in sources:
        count = TEST_ART_SOURCES // len(sources)
        for variant in range(len(targets)):   # each source carries every target's variant
            share = count // len(targets) + (1 if variant < count % len(targets) else 0)
            rows.append((name, variant, share))
    return [r for r in rows if r[2] > 0]


def make_split(scenario: Scenario, train: bool) -> Split:
    """The training or test images of ``scenario`` (deterministic for its seed)."""
    salt = int(hashlib.sha256(scenario.name.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng([scenario.seed, salt, 0 if train else 1])
    images, labels, flags, variants = [], [], [], []
    for name, variant, count in _counts(scenario, train):
        artefact = None if variant is None else (scenario.kind, variant, scenario.position)
        for _ in range(count):
            images.append(draw(name, artefact, rng))
            labels.append(CLASSES.index(name))
            flags.append(variant is not None)
            variants.append(-1 if variant is None else variant)
    return Split(np.stack(images), np.array(labels), np.array(flags), variants)


# ----------------------------------------------------------------------------- model

def _net(classes: int = len(CLASSES)) -> Any:
    from torch import nn

    class SuiteNet(nn.Module):
        """Three conv blocks (32 -> 16 -> 8), global average pooling, a linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, classes)

        def forward(self, x):
            return self.fc(self.pool(self.features(x)).flatten(1))

    return SuiteNet()


def _to_tensor(images: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def _cache_key(scenario: Scenario) -> str:
    config = {"scenario": asdict(scenario), "version": CACHE_VERSION, "epochs": EPOCHS,
              "train_per_class": TRAIN_PER_CLASS}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def trained_model(scenario: Scenario, cache: Path | None) -> tuple[Any, bool]:
    """The scenario's tiny CNN, trained (seeded) or loaded from ``cache``; and whether it
    came from the cache. Weights are cached as ``CACHE/NAME-KEY.pt`` (never committed)."""
    import torch
    import torch.nn.functional as F

    model = _net()
    path = None if cache is None else cache / f"{scenario.name}-{_cache_key(scenario)}.pt"
    if path is not None and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), True
    split = make_split(scenario, train=True)
    x, y = _to_tensor(split.images), torch.from_numpy(split.labels)
    torch.manual_seed(scenario.seed)
    model = _net()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    order_gen = torch.Generator().manual_seed(scenario.seed)
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=order_gen)
        for start in range(0, len(x), 32):
            idx = order[start:start + 32]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    if path is not None:
        import io

        from convlens.files import write_bytes_atomic

        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buffer.getvalue())
    return model, False


# ----------------------------------------------------------------------------- scoring

@dataclass
class Found:
    """How well one method's ranking exposes the planted artefact.

    ``rank`` is 1-based, None when no ranked cluster is mostly artefact images; ``recall`` and
    ``purity`` are those of that cluster (0 when none); ``margin`` = flip rate - random flip
    rate of its causal check with ``interval`` (None when it was not checked).
    """

    rank: int | None
    recall: float
    purity: float
    margin: float | None = None
    interval: tuple[float, float] | None = None


def score_ranked(ranked: Sequence[Mapping[str, Any]], artefact: Iterable[str]) -> Found:
    """Score a ranking of clusters, most suspicious first.

    Args:
        ranked: Clusters as ``{"members": [paths], "flip_rate"?, "random_flip_rate"?,
            "checked"?}`` (``checked``: how many members the causal check covered).
        artefact: The paths of every artefact-bearing test image.
    """
    artefact = set(artefact)
    for rank, cluster in enumerate(ranked, start=1):
        members = list(cluster["members"])
        if not members:
            continue
        hits = sum(m in artefact for m in members)
        purity = hits / len(members)
        if purity >= MOSTLY:
            found = Found(rank, hits / max(len(artefact), 1), purity)
            flip, random_flip = cluster.get("flip_rate"), cluster.get("random_flip_rate")
            if flip is not None and random_flip is not None:
                found.margin = flip - random_flip
                found.interval = margin_interval(flip, random_flip,
                                                 int(cluster.get("checked") or len(members)))
            return found
    return Found(None, 0.0, 0.0)


def score_audit(data: Mapping[str, Any], artefact: Iterable[str]) -> Found:
    """Score ``audit.json`` content.

    When it has a top-level ``strategies`` list (the cross-class audit), its entries in order:
    each holds its ``members`` (paths) and, when checked, ``flip_rate`` and
    ``random_flip_rate``, at its top level or inside ``causal`` / ``causal_check`` when that
    is an object. Otherwise today's ``suspicious`` list in order, each entry's members looked
    up in ``classes[...]["clusters"]``.
    """
    if data.get("strategies") is not None:
        return score_ranked([_strategy(entry) for entry in data["strategies"]], artefact)
    clusters = {(c["name"], k["id"]): k for c in data["classes"] for k in c["clusters"]}
    ranked = []
    for entry in data["suspicious"]:
        cluster = clusters[(entry["class"], entry["cluster"])]
        ranked.append({"members": cluster["members"], "flip_rate": entry.get("flip_rate"),
                       "random_flip_rate": entry.get("random_flip_rate"),
                       "checked": cluster.get("checked_members")})
    return score_ranked(ranked, artefact)


def _strategy(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One ``strategies`` entry as :func:`score_ranked` reads it; the causal figures from
    the entry itself, else from its ``causal`` / ``causal_check`` object (a sentence there
    carries no figures)."""
    checks = [entry] + [entry[key] for key in ("causal", "causal_check")
                        if isinstance(entry.get(key), Mapping)]

    def first(*names: str) -> Any:
        for source in checks:
            for name in names:
                if source.get(name) is not None:
                    return source[name]
        return None

    checked = first("checked", "checked_members", "members_checked")
    if checked is None:   # CausalResult.to_dict() names the count of checked members "members"
        checked = next((c["members"] for c in checks[1:] if isinstance(c.get("members"), int)),
                       None)
    if not isinstance(checked, int):
        checked = None
    return {"members": list(entry.get("members") or []), "flip_rate": first("flip_rate"),
            "random_flip_rate": first("random_flip_rate"), "checked": checked}


def _wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def margin_interval(p1: float, p2: float, n: int) -> tuple[float, float]:
    """95 % interval of ``p1 - p2`` (two rates over ``n`` each), Newcombe's hybrid score
    method (Newcombe 1998, method 10)."""
    l1, u1 = _wilson(p1, n)
    l2, u2 = _wilson(p2, n)
    d = p1 - p2
    return (round(d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), 6),
            round(d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2), 6))


# ----------------------------------------------------------------------------- baselines

def spectral_clusters(maps: np.ndarray, *, seed: int = 0, n_neighbors: int = 10,
                      max_clusters: int = 8) -> np.ndarray:
    """Plain SpRAy clustering (Lapuschkin et al. 2019): cluster labels of ``maps (N, H, W)``.

    Maps clipped at 0 and divided by their sum; a binary k-NN graph symmetrised as
    ``(A + A.T) / 2``; the symmetric normalised Laplacian ``I - D^-1/2 A D^-1/2``; the number
    of clusters k from the largest eigengap ``lambda_k - lambda_{k-1}`` over ``2 <= k <=
    max_clusters``; k-means on the first k eigenvectors, rows normalised. Fewer than
    ``n_neighbors + 2`` maps: one cluster.
    """
    from sklearn.cluster import KMeans
    from sklearn.neighbors import NearestNeighbors

    n = len(maps)
    if n < n_neighbors + 2:
        return np.zeros(n, dtype=int)
    rows = np.clip(maps.reshape(n, -1).astype(np.float64), 0, None)
    rows /= np.maximum(rows.sum(axis=1, keepdims=True), 1e-12)
    neighbours = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(rows)
    index = neighbours.kneighbors(rows, return_distance=False)[:, 1:]
    adjacency = np.zeros((n, n))
    adjacency[np.repeat(np.arange(n), n_neighbors), index.ravel()] = 1.0
    adjacency = (adjacency + adjacency.T) / 2
    inv = 1.0 / np.sqrt(np.maximum(adjacency.sum(axis=1), 1e-12))
    laplacian = np.eye(n) - inv[:, None] * adjacency * inv[None, :]
    values, vectors = np.linalg.eigh(laplacian)
    top = min(max_clusters, n - 1)
    gaps = [values[k] - values[k - 1] for k in range(2, top + 1)]
    k = 2 + int(np.argmax(gaps))
    embedding = vectors[:, :k]
    embedding /= np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embedding)


def plain_spray_ranking(maps: np.ndarray, records: Sequence[Mapping[str, Any]], seed: int = 0
                        ) -> list[dict[str, Any]]:
    """Per predicted class SpRAy; clusters ranked by mistakes (size x error rate), then by
    error rate."""
    clusters = []
    for name in sorted({r["predicted"] for r in records}):
        index = np.flatnonzero([r["predicted"] == name for r in records])
        labels = spectral_clusters(maps[index], seed=seed)
        for cid in np.unique(labels):
            inside = index[labels == cid]
            wrong = sum(not records[i]["correct"] for i in inside)
            clusters.append({"members": [records[i]["path"] for i in inside],
                             "mistakes": wrong, "error_rate": wrong / len(inside)})
    return sorted(clusters, key=lambda c: (-c["mistakes"], -c["error_rate"]))


def mistakes_ranking(maps: np.ndarray, records: Sequence[Mapping[str, Any]], seed: int = 0
                     ) -> list[dict[str, Any]]:
    """The misclassified images only, pooled over classes, clustered as in
    :func:`spectral_clusters`; clusters ranked by size."""
    index = np.flatnonzero([not r["correct"] for r in records])
    if not len(index):
        return []
    labels = spectral_clusters(maps[index], seed=seed)
    clusters = [{"members": [records[i]["path"] for i in index[labels == cid]]}
                for cid in np.unique(labels)]
    return sorted(clusters, key=lambda c: -len(c["members"]))


# ----------------------------------------------------------------------------- one scenario

def write_test_folder(root: Path, split: Split) -> list[str]:
    """Write ``split`` as an ImageFolder under ``root``; returns the artefact images' paths
    relative to ``root`` (as ``audit.json`` writes them)."""
    from PIL import Image

    artefact = []
    for k, image in enumerate(split.images):
        name = CLASSES[split.labels[k]]
        (root / name).mkdir(parents=True, exist_ok=True)
        relative = f"{name}/{k:04d}{ARTEFACT_SUFFIX if split.artefact[k] else ''}.png"
        Image.fromarray(image).save(root / relative)
        if split.artefact[k]:
            artefact.append(relative)
    return artefact


def stored_maps(result: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The audit's stored predicted-class maps ``(N, H, W)`` float32 and their records."""
    from convlens.auditing.analysis import MapReader, stored_images

    store = result.store
    keys = [r["key"] for shard in store.shards() for r in store.shard_records(shard)
            if "key" in r and "row" in r]
    images = stored_images(store, keys)
    return (MapReader(store).stack(images, np.float32), [i.record for i in images])


def artefact_concept(model: Any, split: Split, layer: str = "features") -> int:
    """The artefact's concept, defined without the audit: the channel of ``layer`` whose
    activation maximum over positions differs most (Cohen's d, pooled within-group spread)
    between the test images with the artefact and those without (wherever it sits: a varying
    position lifts the channel's maximum all the same)."""
    import torch

    outputs: list[Any] = []
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        with torch.no_grad():
            model(_to_tensor(split.images))
    finally:
        handle.remove()
    peak = outputs[0].flatten(2).amax(2)
    flags = torch.from_numpy(np.asarray(split.artefact, dtype=bool))
    a, b = peak[flags], peak[~flags]
    pooled = ((a.var(0) + b.var(0)) / 2).sqrt().clamp_min(1e-6)
    return int(((a.mean(0) - b.mean(0)) / pooled).argmax())


def contribution_concept(model: Any, split: Split, scenario: Scenario,
                         layer: str = "features") -> int:
    """The artefact's concept by what it does to the decision, defined without the audit:
    the artefact (variant 0, seeded) planted on every clean test image, the channel whose
    contribution to the first target class's logit (gradient x activation at ``layer``,
    summed over positions) rises most on average, paired image by image."""
    import torch

    clean = split.images[~np.asarray(split.artefact, dtype=bool)]
    rng = np.random.default_rng(scenario.seed)
    planted = np.stack([np.clip(plant(im.astype(np.float64), scenario.kind, 0,
                                      scenario.position, rng), 0, 255).astype(np.uint8)
                        for im in clean])
    target = CLASSES.index(scenario.target_classes[0])
    module = dict(model.named_modules())[layer]

    def contribution(images: np.ndarray) -> Any:
        kept: list[Any] = []
        handle = module.register_forward_hook(lambda _m, _i, out: kept.append(out))
        try:
            logits = model(_to_tensor(images))
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(logits[:, target].sum(), kept[0])
        return (grad * kept[0]).detach().flatten(2).sum(2)

    rise = contribution(planted) - contribution(clean)
    return int(rise.mean(0).argmax())


def concept_ranks(result: Any, artefact: Sequence[str], channel: int,
                  contribution: int | None = None) -> dict[str, Any]:
    """Whether ``channel`` (and ``contribution``) is among the top 3 concepts of the first
    strategy that is mostly artefact images: the audit's ranking (members against the rest of
    their groups) and the plain baseline (the members' mean relevance share alone)."""

    from convlens.auditing.analysis import MapReader, stored_images
    from convlens.auditing.concept_ranking import plain_concepts, relevance_shares

    marked = set(artefact)
    strategy = next((s for s in result.data["strategies"] if s["members"] and
                     sum(m in marked for m in s["members"]) / len(s["members"]) >= MOSTLY),
                    None)
    if strategy is None:
        return {"channel": channel, "audit": None, "plain": None,
                "contribution": contribution, "audit_c": None, "plain_c": None,
                "references": None}
    store = result.store
    keys = [r["key"] for shard in store.shards() for r in store.shard_records(shard)
            if "key" in r and "row" in r]
    images = stored_images(store, keys)
    relevances, _at = MapReader(store).concepts(images)
    position = {path: k for k, path in enumerate(images.paths)}
    members = [position[m] for m in strategy["members"]]
    plain = plain_concepts(relevance_shares(relevances), members, top=3)
    audit = [c["channel"] for c in strategy.get("concepts", [])[:3]]
    # what the report shows: of the top 3 concepts' 6 reference images, the most that are
    # artefact images (6 of 6: the patches show the artefact)
    references = max((sum(r["path"] in marked for r in c["references"])
                      for c in strategy.get("concepts", [])[:3]), default=0)
    return {"channel": channel, "audit": channel in audit, "plain": channel in plain,
            "contribution": contribution, "audit_c": contribution in audit,
            "plain_c": contribution in plain, "references": references,
            "strategy": strategy["id"]}


def run_scenario(scenario: Scenario, cache: Path | None, *, concepts: bool = False
                 ) -> dict[str, Any]:
    """Train (or load), audit the test folder, score the three methods (and with
    ``concepts``, whether the artefact's concept is among its strategy's top 3)."""
    import convlens as cl

    start = time.perf_counter()
    model, cached = trained_model(scenario, cache)
    trained = time.perf_counter() - start
    split = make_split(scenario, train=False)
    with tempfile.TemporaryDirectory(prefix="convlens-suite-") as tmp:
        data = Path(tmp) / "data"
        artefact = write_test_folder(data, split)
        clf = cl.Classifier(model, labels=list(CLASSES), input_size=SIZE, mean=(0, 0, 0),
                            std=(1, 1, 1), resize="squash", device="cpu")
        result = cl.audit(clf, data, out=Path(tmp) / "out", seed=scenario.seed, batch_size=64,
                          concepts=True if concepts else None)
        concept = concept_ranks(result, artefact, artefact_concept(model, split),
                                contribution_concept(model, split, scenario)) \
            if concepts else None
        maps, records = stored_maps(result)
        found = {"audit": score_audit(result.data, artefact),
                 "spray": score_ranked(plain_spray_ranking(maps, records, scenario.seed),
                                       artefact),
                 "mistakes": score_ranked(mistakes_ranking(maps, records, scenario.seed),
                                          artefact)}
        by_path = {r["path"]: r for r in records}
        art_records = [by_path[p] for p in artefact if p in by_path]
        shortcut = np.mean([r["predicted"] in scenario.target_classes for r in art_records
                            if r["label"] not in scenario.target_classes])
    return {"scenario": scenario, "found": found, "accuracy": result.data["accuracy"],
            "shortcut_rate": float(shortcut), "artefact_images": len(artefact),
            "images": len(records), "train_s": trained, "cached": cached, "concept": concept,
            "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- report

METHODS = ("audit", "spray", "mistakes")


def format_found(found: Found) -> str:
    """A table cell: ``rank / recall / purity``, or dashes when nothing was found."""
    if found.rank is None:
        return "- / - / -"
    return f"{found.rank} / {found.recall:.2f} / {found.purity:.2f}"


def format_margin(found: Found) -> str:
    """A table cell: the causal margin and its 95 % interval, or a dash when unchecked."""
    if found.margin is None:
        return "-"
    return f"{found.margin:+.2f} [{found.interval[0]:+.2f}, {found.interval[1]:+.2f}]"


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def scenario_table(rows: Sequence[dict[str, Any]]) -> str:
    concepts = any(row.get("concept") for row in rows)
    extra = (" tag concept in top 3, by activation (audit / plain) | by contribution "
             "(audit / plain) | artefact references of a top-3 concept |") if concepts else ""
    lines = ["| scenario | targets | accuracy | shortcut | audit rank / recall / purity | "
             "causal margin [95 %] | SpRAy rank / recall / purity | mistakes-only rank / "
             "recall / purity |" + extra, "|---|---|---|---|---|---|---|---|"
             + ("---|---|---|" if concepts else "")]
    for row in rows:
        s, f = row["scenario"], row["found"]
        c = row.get("concept") or {}
        lines.append(f"| {s.name} | {'+'.join(s.target_classes)} | {row['accuracy']:.2f} | "
                     f"{row['shortcut_rate']:.2f} | {format_found(f['audit'])} | "
                     f"{format_margin(f['audit'])} | {format_found(f['spray'])} | "
                     f"{format_found(f['mistakes'])} |"
                     + (f" {_yes(c.get('audit'))} / {_yes(c.get('plain'))} (channel "
                        f"{c.get('channel')}) | {_yes(c.get('audit_c'))} / "
                        f"{_yes(c.get('plain_c'))} (channel {c.get('contribution')}) | "
                        f"{'-' if c.get('references') is None else c['references']} of 6 |"
                        if concepts else ""))
    return "\n".join(lines)


def concept_summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: the rate at which the artefact's concept is among its strategy's top 3
    (audit ranking against the plain baseline), over the scenarios where a strategy was
    mostly artefact images."""
    scored = [r["concept"] for r in rows if r.get("concept") and r["concept"]["audit"]
              is not None]
    if not scored:
        return []
    audit, plain = sum(c["audit"] for c in scored), sum(c["plain"] for c in scored)
    audit_c, plain_c = sum(c["audit_c"] for c in scored), sum(c["plain_c"] for c in scored)
    missing = len(rows) - len(scored)
    return [f"Artefact concept among the top 3 concepts of its strategy, over {len(scored)} "
            f"scenario(s) with a strategy that is mostly artefact images ({missing} "
            "without): by activation (the channel whose peak activation differs most, Cohen's "
            f"d): audit (against the rest of its groups) {audit}, plain (members' mean share "
            f"alone) {plain}; by contribution (the channel whose contribution to the target "
            f"logit rises most when the artefact is planted on clean images): audit {audit_c}, "
            f"plain {plain_c}. A top-3 concept whose 6 reference images are all artefact "
            f"images: {sum(c['references'] == 6 for c in scored)}, at least 5 of 6: "
            f"{sum(c['references'] >= 5 for c in scored)}.", ""]


LEARNED = 0.5
"""A scenario's model "learned the shortcut" when at least this share of the other classes'
artefact test images is predicted as a target class."""
COVERING = 0.25
"""``first, recall >= 0.25``: ranked first AND holding a quarter of all artefact images (a
pure cluster of three tagged images is ranked first by the plain rule; with two target
classes a per-class cluster holds at most about half of them)."""


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method: share ranked first, share ranked first with recall >= :data:`COVERING`,
    share in the top 3, share found at all, mean recall and purity (over all scenarios, 0
    where not found)."""
    out = {}
    for method in METHODS:
        found = [r["found"][method] for r in rows]
        n = max(len(found), 1)
        out[method] = {
            "first": sum(f.rank == 1 for f in found) / n,
            "first_covering": sum(f.rank == 1 and f.recall >= COVERING for f in found) / n,
            "top3": sum(f.rank is not None and f.rank <= 3 for f in found) / n,
            "found": sum(f.rank is not None for f in found) / n,
            "recall": float(np.mean([f.recall for f in found])) if found else 0.0,
            "purity": float(np.mean([f.purity for f in found])) if found else 0.0,
        }
    return out


NAMES = {"audit": "today's `cl.audit`", "spray": "plain per-class SpRAy (paper)",
         "mistakes": "mistakes only"}


def headline(rows: Sequence[dict[str, Any]], title: str) -> list[str]:
    """Markdown lines: ``title``, then one line per method of :func:`summary` over ``rows``
    (also used by the photo cases, benchmarks/shortcut_photos.py)."""
    lines = [f"{title}: {len(rows)} scenarios", "",
             f"| method | ranked first | first, recall >= {COVERING} | in top 3 | found at all | "
             "mean recall | mean purity |", "|---|---|---|---|---|---|---|"]
    for method, s in summary(rows).items():
        lines.append(f"| {NAMES[method]} | {s['first']:.0%} | {s['first_covering']:.0%} | "
                     f"{s['top3']:.0%} | {s['found']:.0%} | {s['recall']:.2f} | "
                     f"{s['purity']:.2f} |")
    return lines + [""]


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """The headline tables: all scenarios, those whose model learned the shortcut, per seed
    when there are several, and ranked-first counts per artefact kind."""
    lines = headline(rows, "All")
    learned = [r for r in rows if r["shortcut_rate"] >= LEARNED]
    lines += headline(learned, f"Model learned the shortcut (shortcut rate >= {LEARNED})")
    seeds = sorted({r["scenario"].seed for r in rows})
    if len(seeds) > 1:
        for seed in seeds:
            lines += headline([r for r in rows if r["scenario"].seed == seed], f"Seed {seed}")
    lines += ["Ranked first, per artefact kind (audit / SpRAy / mistakes-only):", ""]
    for kind in KINDS:
        chosen = [r for r in rows if r["scenario"].kind == kind]
        if chosen:
            s = summary(chosen)
            firsts = [sum(r["found"][m].rank == 1 for r in chosen) for m in METHODS]
            lines.append(f"- {kind}: " + " / ".join(f"{n} of {len(chosen)}" for n in firsts)
                         + f" (top 3: {s['audit']['top3']:.0%} / {s['spray']['top3']:.0%} / "
                         f"{s['mistakes']['top3']:.0%})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 scenarios only")
    parser.add_argument("--fast", action="store_true",
                        help="the 6 scenarios of the test suite's fast subset (seed 3)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    parser.add_argument("--cache", type=Path, default=cache_home / "convlens-suite",
                        help="trained weights (default ~/.cache/convlens-suite)")
    parser.add_argument("--no-cache", action="store_true", help="train every model afresh")
    parser.add_argument("--out", type=Path, help="also write the output to this Markdown file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concepts", action="store_true",
                        help="audit with concepts and report whether the artefact's concept "
                             "(defined from the model alone) is among its strategy's top 3")
    parser.add_argument("--only", default="",
                        help="comma-separated artefact kinds to keep (e.g. corner_tag,"
                             "small_object)")
    parser.add_argument("--photos", action="store_true",
                        help="run the real-model cases instead: the bundled model, overlays on "
                             "photos (benchmarks/shortcut_photos.py; --seeds, --out, --threads "
                             "apply)")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers (e.g. 0,1,2), got {args.seeds!r}")
    if args.photos:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from shortcut_photos import main as photos_main

        forwarded = ["--seeds", args.seeds, "--threads", str(args.threads)]
        return photos_main(forwarded + (["--out", str(args.out)] if args.out else []))
    import torch

    torch.set_num_threads(args.threads)
    cache = None if args.no_cache else args.cache
    chosen = fast_scenarios() if args.fast else [
        s for seed in seeds for s in (quick_scenarios(seed) if args.quick else scenarios(seed))]
    started = time.perf_counter()
    if args.only:
        kinds = {k.strip() for k in args.only.split(",") if k.strip()}
        chosen = [s for s in chosen if s.kind in kinds]
    rows = []
    for k, scenario in enumerate(chosen, start=1):
        row = run_scenario(scenario, cache, concepts=args.concepts)
        rows.append(row)
        found = row["found"]
        print(f"[{k}/{len(chosen)}] {scenario.name}: audit {format_found(found['audit'])}, "
              f"SpRAy {format_found(found['spray'])}, mistakes {format_found(found['mistakes'])}"
              f" ({row['seconds']:.1f} s{', cached model' if row['cached'] else ''})",
              flush=True)
    total = time.perf_counter() - started
    command = "python benchmarks/shortcut_suite.py" + (" --quick" if args.quick else "") + \
        (" --fast" if args.fast else f" --seeds {','.join(map(str, seeds))}") + \
        (" --concepts" if args.concepts else "") + (f" --only {args.only}" if args.only else "")
    text = "\n\n".join([
        f"# Planted-shortcut suite\n\n`{command}`, {torch.get_num_threads()} torch threads, "
        f"{total:.0f} s in all ({sum(not r['cached'] for r in rows)} models trained). "
        "Cells: rank of the first cluster that is >= 50 % artefact images / its recall of all "
        "artefact images / its purity; '-' = no such cluster. accuracy: the audit's; shortcut: "
        "share of other classes' artefact images predicted as a target class.",
        summary_table(rows), "\n".join(concept_summary(rows)), scenario_table(rows)])
    print("\n" + text)
    if args.out is not None:
        from convlens.files import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
