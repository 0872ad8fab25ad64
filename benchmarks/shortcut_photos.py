"""The planted-shortcut suite's real-model cases (convlens 10, item 1): overlays on photos.

The synthetic suite (benchmarks/shortcut_suite.py) trains tiny CNNs to learn a shortcut. Here
nothing is trained: the bundled pretrained EfficientNet-Lite0 (``convlens.load_model()``,
offline) meets an overlay drawn on photos, and we watch a real network's reaction to it.

Inputs: the photos that ship inside installed packages (scikit-image's data, as in
:mod:`convlens.io.samples`, plus a few more of its colour photos and scikit-learn's two
sample images; never a download) give :data:`SIZE` px inputs by seeded random square crops
(40-100 % of the shorter side), horizontal flips and mild colour jitter. Half of them, drawn
at random, get the overlay (:data:`KINDS`: a caption bar, a bold text watermark, a coloured
"SALE" sticker, a frame, a barcode label, a thumbnail of the cat photo as a sticker), bounded
to at most :data:`MAX_AREA` of what the model sees (its 224 px centre crop, inside which every
overlay is drawn). The label of every photo is the model's prediction on its CLEAN version, so
every mistake in the test CSV is the overlay's doing; overlaid files end in ``-art`` as in the
synthetic suite. By construction, then, a method that clusters only the mistakes holds
nothing but overlay-induced ones: its purity says nothing here; what matters is whether one
strategy gathers them across classes and whether the causal check confirms its region.

Each case is audited with ``cl.audit`` and scored with the synthetic suite's scoring and
baselines (imported, not copied), against the overlay-induced mistakes (overlaid photos
whose prediction changed): the overlaid photos that kept their prediction look like any
clean photo of their class to every method, so no cluster is "mostly" those.

Run::

    python benchmarks/shortcut_photos.py                 # the default overlays, seed 0
    python benchmarks/shortcut_photos.py --kinds caption,watermark,sticker,frame,barcode,cat_sticker
    python benchmarks/shortcut_photos.py --out benchmarks/results/shortcut_photos_cpu.md
    python benchmarks/shortcut_suite.py --photos         # the same, from the suite

:func:`build_case` and :func:`photo_case` are importable by tests; nothing here is under src/.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent / "src") not in sys.path:
    sys.path.insert(0, str(HERE.parent / "src"))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import shortcut_suite as suite  # noqa: E402  (the synthetic suite: scoring and baselines)

SIZE = 256                # side of every input (the bundled model resizes to 256 ...)
VIEW = 224                # ... and sees the centre 224 x 224 crop
MARGIN = (SIZE - VIEW) // 2
MAX_AREA = 1 / 8          # an overlay covers at most this share of the model's view
KINDS = ("caption", "watermark", "sticker", "frame", "barcode", "cat_sticker")
DEFAULT_KINDS = ("caption", "watermark", "frame", "cat_sticker")
"""The kinds run by default: those that changed >= 30 % of the predictions at seed 0
(BENCHMARKS.md); ``--kinds`` runs the others too."""
VARYING = ("caption", "cat_sticker")   # also run at varying positions
COUNT = 64                # photos per case (half overlaid) in the benchmark run
ARTEFACT_SUFFIX = suite.ARTEFACT_SUFFIX
CSV_NAME = "photos.csv"


# ----------------------------------------------------------------------------- photos

def _skimage_photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {"chelsea": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket(),
            "motorcycle_left": data.stereo_motorcycle()[0],
            "motorcycle_right": data.stereo_motorcycle()[1],
            "astronaut": data.astronaut(), "hubble": data.hubble_deep_field(),
            "retina": data.retina(), "ihc": data.immunohistochemistry(),
            "camera": data.camera()}


@functools.lru_cache(maxsize=1)
def _source_arrays() -> tuple[tuple[str, np.ndarray], ...]:
    from sklearn.datasets import load_sample_images

    photos = _skimage_photos()
    sample = load_sample_images()
    for path, image in zip(sample.filenames, sample.images):
        photos[Path(path).stem] = image
    return tuple(sorted(photos.items()))


def source_photos() -> dict[str, Any]:
    """The offline photos the inputs are cut from, as RGB PIL images keyed by name:
    scikit-image's chelsea, coffee, rocket, both motorcycle views, astronaut, hubble deep
    field, retina, immunohistochemistry and camera (grey, as RGB); scikit-learn's china and
    flower. All ship inside the packages' wheels."""
    from PIL import Image

    out = {}
    for name, array in _source_arrays():
        image = Image.fromarray(array)
        out[name] = image.convert("RGB")
    return out


def make_inputs(count: int, seed: int = 0, *, stream: int = 71) -> list[np.ndarray]:
    """``count`` distinct ``(SIZE, SIZE, 3)`` uint8 inputs, deterministic for ``seed``:
    a photo drawn at random, a square crop of 40-100 % of its shorter side at a random
    place, a horizontal flip half of the time, brightness, contrast and saturation each
    scaled by 0.85-1.15, resized to :data:`SIZE` (bicubic). ``stream`` picks the random
    stream: another one draws fresh inputs of the same recipe (benchmarks/correction_photos.py
    measures on photos no audit saw)."""
    from PIL import Image, ImageEnhance

    photos = list(source_photos().items())
    rng = np.random.default_rng([seed, stream])
    inputs: list[np.ndarray] = []
    seen: set[str] = set()
    while len(inputs) < count:
        _, photo = photos[int(rng.integers(len(photos)))]
        width, height = photo.size
        side = int(min(width, height) * rng.uniform(0.4, 1.0))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        image = photo.crop((x, y, x + side, y + side)).resize((SIZE, SIZE),
                                                              Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhance(image).enhance(float(rng.uniform(0.85, 1.15)))
        array = np.asarray(image, dtype=np.uint8)
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            inputs.append(array)
    return inputs


# ----------------------------------------------------------------------------- overlays

_CAPTIONS = ("(c) STOCKPHOTO", "PREVIEW ONLY")
_WATERMARKS = ("SAMPLE", "PROOF")
_STICKER_COLOURS = ((230, 30, 40), (255, 200, 0), (30, 90, 230))
_FRAME_COLOURS = ((230, 30, 40), (40, 200, 60), (30, 90, 230))


_THUMBNAILS = {"cat_sticker": ("chelsea", (40, 0, 340, 300))}        # the cat's face


@functools.lru_cache(maxsize=4)
def _thumbnail(kind: str, side: int) -> Any:
    from PIL import Image

    name, box = _THUMBNAILS[kind]
    photo = dict(_source_arrays())[name]
    return Image.fromarray(photo).crop(box).resize((side, side), Image.Resampling.BICUBIC)


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)    # Pillow's bundled font: no system fonts


def _box_mask(box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    x0, y0, x1, y1 = box
    mask[max(y0, 0):min(y1, SIZE), max(x0, 0):min(x1, SIZE)] = True
    return mask


def _corner(position: str, rng: np.random.Generator, w: int, h: int, inset: int = 6
            ) -> tuple[int, int]:
    """Top-left of a ``w x h`` patch in a corner of the view: bottom right when fixed, a
    random corner when varying."""
    lo_x, lo_y = MARGIN + inset, MARGIN + inset
    hi_x, hi_y = MARGIN + VIEW - inset - w, MARGIN + VIEW - inset - h
    if position == "fixed":
        return hi_x, hi_y
    corner = int(rng.integers(4))
    return (lo_x if corner % 2 == 0 else hi_x), (lo_y if corner < 2 else hi_y)


def draw_overlay(image: np.ndarray, kind: str, position: str, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Draw overlay ``kind`` on a copy of ``image`` ``(SIZE, SIZE, 3)`` uint8.

    ``position`` ``"fixed"``: the same place, text and colour on every photo; ``"varying"``:
    a random place (a corner; top or bottom for the caption; anywhere for the watermark) and
    a random text, colour or frame width. The cat sticker varies its corner only. Returns the
    new image and the overlay's region, bool ``(SIZE, SIZE)`` (the box or frame it occupies,
    not only the changed pixels), always inside the model's centre crop.
    """
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image).convert("RGB")
    pen = ImageDraw.Draw(canvas)
    fixed = position == "fixed"

    def choose(options: Sequence[Any]) -> Any:
        return options[0] if fixed else options[int(rng.integers(len(options)))]

    if kind == "caption":              # a black bar across the bottom (or top) with white text
        height = 26
        top = MARGIN + VIEW - height if fixed or rng.random() < 0.5 else MARGIN
        box = (MARGIN, top, MARGIN + VIEW, top + height)
        pen.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(0, 0, 0))
        pen.text(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), choose(_CAPTIONS),
                 font=_font(18), fill=(255, 255, 255), anchor="mm", stroke_width=1,
                 stroke_fill=(255, 255, 255))
        mask = _box_mask(box)
    elif kind == "watermark":          # bold white letters with a dark outline
        text, font = choose(_WATERMARKS), _font(38)
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font, stroke_width=3)
        w, h = right - left, bottom - top
        if fixed:
            x, y = MARGIN + (VIEW - w) // 2, MARGIN + (VIEW - h) // 2
        else:
            x = int(rng.integers(MARGIN + 4, MARGIN + VIEW - w - 4))
            y = int(rng.integers(MARGIN + 4, MARGIN + VIEW - h - 4))
        pen.text((x - left, y - top), text, font=font, fill=(255, 255, 255), stroke_width=3,
                 stroke_fill=(20, 20, 20))
        mask = _box_mask((x, y, x + w, y + h))
    elif kind == "sticker":            # a coloured disc with a white word, in a corner
        side = 64
        x, y = _corner(position, rng, side, side)
        colour = choose(_STICKER_COLOURS)
        pen.ellipse((x, y, x + side - 1, y + side - 1), fill=colour, outline=(255, 255, 255),
                    width=3)
        pen.text((x + side // 2, y + side // 2), "SALE", font=_font(17), fill=(255, 255, 255),
                 anchor="mm", stroke_width=1, stroke_fill=(255, 255, 255))
        mask = _box_mask((x, y, x + side, y + side))
    elif kind == "frame":              # a coloured border around the model's view
        width = 7 if fixed else int(rng.integers(5, 8))
        colour = choose(_FRAME_COLOURS)
        outer = (MARGIN, MARGIN, MARGIN + VIEW - 1, MARGIN + VIEW - 1)
        pen.rectangle(outer, outline=colour, width=width)
        mask = _box_mask((MARGIN, MARGIN, MARGIN + VIEW, MARGIN + VIEW))
        mask &= ~_box_mask((MARGIN + width, MARGIN + width, MARGIN + VIEW - width,
                            MARGIN + VIEW - width))
    elif kind in _THUMBNAILS:          # a thumbnail of another photo, as a sticker in a corner
        side = 72
        x, y = _corner(position, rng, side, side)
        canvas.paste(_thumbnail(kind, side), (x, y))
        mask = _box_mask((x, y, x + side, y + side))
    elif kind == "barcode":            # black bars on a white label, in a corner
        w, h = 76, 48
        x, y = _corner(position, rng, w, h)
        pen.rectangle((x, y, x + w - 1, y + h - 1), fill=(255, 255, 255))
        bars = np.random.default_rng(5 if fixed else int(rng.integers(1 << 30))
                                     ).integers(1, 4, 40)
        cursor, black = x + 5, True
        for bar in bars:
            if cursor + bar > x + w - 5:
                break
            if black:
                pen.rectangle((cursor, y + 5, cursor + bar - 1, y + h - 6), fill=(0, 0, 0))
            cursor, black = cursor + bar, not black
        mask = _box_mask((x, y, x + w, y + h))
    else:
        raise ValueError(f"unknown overlay kind {kind!r}; known: {', '.join(KINDS)}")
    return np.asarray(canvas, dtype=np.uint8), mask


def view_mask(mask: np.ndarray) -> np.ndarray:
    """An image-size mask cut to the model's view: its centre ``VIEW x VIEW`` crop (what the
    audit's causal check covers, at the model's input size)."""
    return mask[MARGIN:MARGIN + VIEW, MARGIN:MARGIN + VIEW]


# ----------------------------------------------------------------------------- one case

@dataclass(frozen=True)
class PhotoScenario:
    """One overlay on photos: ``kind`` (:data:`KINDS`), ``position`` (``"fixed"`` or
    ``"varying"``), ``count`` photos (half overlaid), ``seed``."""

    kind: str
    position: str = "fixed"
    count: int = COUNT
    seed: int = 0

    @property
    def name(self) -> str:
        return f"photos-{self.kind}-{self.position}-n{self.count}-s{self.seed}"


@dataclass
class Case:
    """A written case: the CSV, which rows carry the overlay and what it did.

    Attributes:
        scenario: What was drawn.
        csv: The ``path,label`` CSV (paths relative to its folder, as ``audit.json`` writes
            them).
        labels: Every row's label: the model's prediction on the clean photo.
        artefact: Paths of the overlaid photos.
        predicted: The model's prediction on each overlaid photo.
        masks: Each overlaid photo's overlay region, bool ``(SIZE, SIZE)``.
        clean: Every row's clean input (the overlaid rows' too), for checks.
        confidence: The model's probability of each row's label on the clean input.
    """

    scenario: PhotoScenario
    csv: Path
    labels: dict[str, str]
    artefact: list[str]
    predicted: dict[str, str]
    masks: dict[str, np.ndarray]
    clean: dict[str, np.ndarray] = field(repr=False)
    confidence: dict[str, float] = field(default_factory=dict)

    @property
    def changed(self) -> list[str]:
        """Overlaid photos whose prediction the overlay changed (every mistake in the CSV)."""
        return [p for p in self.artefact if self.predicted[p] != self.labels[p]]

    @property
    def change_rate(self) -> float:
        return len(self.changed) / max(len(self.artefact), 1)

    def confident_change_rate(self, threshold: float = 0.5) -> float | None:
        """The change rate among overlaid photos the model was at least ``threshold`` sure
        of when clean (None when there are none): random crops of a deep field or a retina
        give weak predictions that anything flips."""
        sure = [p for p in self.artefact if self.confidence.get(p, 0.0) >= threshold]
        if not sure:
            return None
        return sum(self.predicted[p] != self.labels[p] for p in sure) / len(sure)

    @property
    def destinations(self) -> Counter:
        """How many changed predictions went into each class."""
        return Counter(self.predicted[p] for p in self.changed)


def predict_top(classifier: Any, images: Sequence[np.ndarray], batch_size: int = 32
                ) -> list[tuple[str, float]]:
    """Top-1 ``(class name, probability)`` of ``images`` (uint8 arrays), through the
    classifier's own preprocessing (the audit's)."""
    out: list[tuple[str, float]] = []
    for start in range(0, len(images), batch_size):
        out += [row[0] for row in classifier.predict(list(images[start:start + batch_size]),
                                                     top=1)]
    return out


def occlusion_change_rate(case: Case, classifier: Any, batch_size: int = 32) -> float:
    """Control: the share of overlaid photos whose prediction changes when the overlay's
    region is instead filled with the clean photo's per-channel mean (as the audit's causal
    check covers a region). Below :attr:`Case.change_rate` when the model reacts to what the
    overlay shows, not only to what it hides."""
    covered = []
    for path in case.artefact:
        image = case.clean[path].copy()
        image[case.masks[path]] = image.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
        covered.append(image)
    after = predict_top(classifier, covered, batch_size)
    return float(np.mean([name != case.labels[p] for (name, _), p in zip(after, case.artefact)]))


def build_case(scenario: PhotoScenario, root: Path, classifier: Any,
               batch_size: int = 32) -> Case:
    """Write ``scenario``'s photos under ``root/images`` and its CSV ``root/photos.csv``.

    Rows in a seeded random half get the overlay (their files end in ``-art``); every label
    is the model's prediction on the clean input.
    """
    from PIL import Image

    from convlens.files import write_bytes_atomic, write_text_atomic

    if scenario.kind not in KINDS:
        raise ValueError(f"unknown overlay kind {scenario.kind!r}; known: {', '.join(KINDS)}")
    inputs = make_inputs(scenario.count, scenario.seed)
    rng = np.random.default_rng([scenario.seed, KINDS.index(scenario.kind),
                                 0 if scenario.position == "fixed" else 1])
    overlaid = set(rng.permutation(scenario.count)[:scenario.count // 2].tolist())
    clean = predict_top(classifier, inputs, batch_size)
    paths, written, masks = [], [], {}
    for k, image in enumerate(inputs):
        path = f"images/{k:04d}{ARTEFACT_SUFFIX if k in overlaid else ''}.png"
        if k in overlaid:
            image, masks[path] = draw_overlay(image, scenario.kind, scenario.position, rng)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        write_bytes_atomic(root / path, buffer.getvalue())
        paths.append(path)
        written.append(image)
    artefact = [p for k, p in enumerate(paths) if k in overlaid]
    after = [name for name, _ in predict_top(classifier, [written[k] for k in sorted(overlaid)],
                                             batch_size)]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows((path, name) for path, (name, _) in zip(paths, clean))
    write_text_atomic(root / CSV_NAME, text.getvalue())
    return Case(scenario, root / CSV_NAME, {p: name for p, (name, _) in zip(paths, clean)},
                artefact, dict(zip(artefact, after)), masks, dict(zip(paths, inputs)),
                {p: prob for p, (_, prob) in zip(paths, clean)})


class PhotoCase(NamedTuple):
    """What a test of the audit needs: the CSV to audit, the overlaid photos' paths (as
    ``audit.json`` writes them) and the overlay's region at the image size."""

    data: Path
    artefact: list[str]
    mask: np.ndarray


def photo_case(root: Path, kind: str = "caption", *, count: int = 80, seed: int = 0,
               classifier: Any = None) -> PhotoCase:
    """A fixed-position case written under ``root`` (default: the bundled model, on the CPU).

    The mask is the same on every overlaid photo (fixed position); :func:`view_mask` cuts
    it to the model's input, where the audit's causal check covers regions.

    Example (a later test of the cross-class audit)::

        data, artefact, mask = photo_case(tmp_path, "caption")
        result = cl.audit(cl.load_model(device="cpu"), data, out=tmp_path / "out")
    """
    if classifier is None:
        import convlens as cl

        classifier = cl.load_model(device="cpu")
    case = build_case(PhotoScenario(kind, "fixed", count, seed), Path(root), classifier)
    return PhotoCase(case.csv, case.artefact, next(iter(case.masks.values())))


# ----------------------------------------------------------------------------- audit + score

def scenarios(seed: int = 0, count: int = COUNT, kinds: Sequence[str] = DEFAULT_KINDS
              ) -> list[PhotoScenario]:
    """The benchmark's cases: each of ``kinds`` at a fixed position, then those of them in
    :data:`VARYING` (the caption at the top or bottom, the cat sticker in any corner) at
    varying positions."""
    fixed = [PhotoScenario(kind, "fixed", count, seed) for kind in kinds]
    varying = [PhotoScenario(kind, "varying", count, seed) for kind in kinds if kind in VARYING]
    return fixed + varying


def run_case(scenario: PhotoScenario, classifier: Any, batch_size: int = 32
             ) -> dict[str, Any]:
    """Build ``scenario``, audit it with ``cl.audit`` and score the audit, plain SpRAy and
    mistakes-only clustering against the overlay-induced mistakes."""
    import convlens as cl

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="convlens-photos-") as tmp:
        case = build_case(scenario, Path(tmp) / "data", classifier, batch_size)
        occluded = occlusion_change_rate(case, classifier, batch_size)
        built = time.perf_counter() - start
        result = cl.audit(classifier, case.csv, out=Path(tmp) / "out", seed=scenario.seed,
                          batch_size=batch_size)
        maps, records = suite.stored_maps(result)
        target = case.changed
        found = {"audit": suite.score_audit(result.data, target),
                 "spray": suite.score_ranked(
                     suite.plain_spray_ranking(maps, records, scenario.seed), target),
                 "mistakes": suite.score_ranked(
                     suite.mistakes_ranking(maps, records, scenario.seed), target)}
        by_path = {r["path"]: r for r in records}
        agree = float(np.mean([by_path[p]["predicted"] == case.predicted[p]
                               for p in case.artefact if p in by_path]))
    destinations = case.destinations
    top = destinations.most_common(3)
    return {"scenario": scenario, "found": found, "accuracy": result.data["accuracy"],
            "change_rate": case.change_rate, "changed": len(case.changed),
            "confident_change_rate": case.confident_change_rate(), "occluded_rate": occluded,
            "overlaid": len(case.artefact), "classes": len(destinations),
            "top": top, "top_share": top[0][1] / len(case.changed) if top else 0.0,
            "area": float(np.mean([view_mask(m).mean() for m in case.masks.values()])),
            "audit_agrees": agree, "images": len(records), "build_s": built,
            "seconds": time.perf_counter() - start}


def case_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per case: what the overlay did, then each method's score (the synthetic
    suite's cells)."""
    lines = ["| case | area | changed | changed, sure photos | covered instead | into classes "
             "| top destinations | audit rank / recall / purity | causal margin [95 %] | "
             "SpRAy rank / recall / purity | mistakes-only rank / recall / purity |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        f = row["found"]
        top = ", ".join(f"{name} {n}" for name, n in row["top"])
        sure = row["confident_change_rate"]
        lines.append(f"| {row['scenario'].name} | {row['area']:.1%} | {row['changed']}/"
                     f"{row['overlaid']} ({row['change_rate']:.0%}) | "
                     f"{'-' if sure is None else f'{sure:.0%}'} | {row['occluded_rate']:.0%} | "
                     f"{row['classes']} | {top} | "
                     f"{suite.format_found(f['audit'])} | {suite.format_margin(f['audit'])} | "
                     f"{suite.format_found(f['spray'])} | {suite.format_found(f['mistakes'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--count", type=int, default=COUNT, help="photos per case")
    parser.add_argument("--kinds", default=None,
                        help=f"comma-separated overlay kinds of {','.join(KINDS)} (default: "
                             f"{','.join(DEFAULT_KINDS)})")
    parser.add_argument("--out", type=Path, help="also write the output to this Markdown file")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers (e.g. 0,1,2), got {args.seeds!r}")
    kinds = DEFAULT_KINDS if args.kinds is None else tuple(
        k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown overlay kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    import torch

    import convlens as cl

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    classifier = cl.load_model(device="cpu")
    chosen = [s for seed in seeds for s in scenarios(seed, args.count, kinds)]
    rows = []
    for k, scenario in enumerate(chosen, start=1):
        row = run_case(scenario, classifier)
        rows.append(row)
        print(f"[{k}/{len(chosen)}] {scenario.name}: changed {row['change_rate']:.0%} into "
              f"{row['classes']} classes; audit {suite.format_found(row['found']['audit'])}, "
              f"SpRAy {suite.format_found(row['found']['spray'])}, mistakes "
              f"{suite.format_found(row['found']['mistakes'])} ({row['seconds']:.1f} s)",
              flush=True)
    total = time.perf_counter() - started
    command = (f"python benchmarks/shortcut_photos.py --seeds {','.join(map(str, seeds))} "
               f"--count {args.count}" + (f" --kinds {','.join(kinds)}" if args.kinds else ""))
    text = "\n\n".join([
        f"# Planted-shortcut suite: overlays on photos, bundled EfficientNet-Lite0\n\n"
        f"`{command}`, {torch.get_num_threads()} torch threads, {total:.0f} s in all. "
        "area: the overlay's mean share of the model's 224 px view; changed: overlaid photos "
        "whose prediction the overlay changed (labels are the clean predictions, so these are "
        "all the mistakes). Method cells: rank of the first cluster that is >= 50 % "
        "overlay-induced mistakes / its recall of them / its purity; '-' = no such cluster.",
        "\n".join(suite.headline(rows, "Overlays on photos")), case_table(rows)])
    print("\n" + text)
    if args.out is not None:
        from convlens.files import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
