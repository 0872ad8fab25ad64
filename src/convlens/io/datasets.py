"""Image datasets: find the files, decode them in parallel, turn bad files into records.

Three layouts are read (docs/architecture.md, "Layers and the direction data flows": io
is the leftmost layer, it imports nothing from the layers to its right):

* **ImageFolder**: ``root/CLASS/.../image.jpg`` - each immediate sub-folder is a class
  (torchvision's convention); images directly in ``root`` are reported, not guessed.
* **CSV**: a file with a header naming ``path`` and ``label`` columns; paths are relative
  to the CSV's folder (absolute paths are kept).
* **plain**: files and folders, walked recursively, without labels
  (:func:`scan_inputs`, what ``convlens explain`` reads).

Folders are walked by the one folder walker, :mod:`convlens.io.walk` (its rules:
docs/architecture.md, "Finding images"): symlinked folders are never followed (a link loop
cannot hang it), hidden entries, the ``exclude`` paths (e.g. a job's own output folder) and
every folder holding the marker file :data:`OUTPUT_MARKER` that convlens puts in each output
folder it creates are skipped (a job never reads its own output), and broken symbolic links
are recorded as problems with the reason.

:func:`batches` decodes with a :class:`torch.utils.data.DataLoader` (``workers`` processes;
0 decodes in this process): a file that fails to decode becomes an
:class:`~convlens.io.images.InputProblem` in its batch instead of stopping the run. Every
file becomes its network input through
:meth:`~convlens.preprocessing.Preprocessing.load_file` (JPEGs decoded at reduced size
where the input size allows), the same function :meth:`Classifier.prepare
<convlens.models.classifier.Classifier.prepare>` uses. Every file's content is hashed
(SHA-256) on the way, giving each item a stable :attr:`DatasetItem.key`
that a job can use to skip finished work. Memory stays bounded by the batch size (plus the
DataLoader's prefetch of ``2 x workers`` batches).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from convlens.errors import ConvlensError
from convlens.io.images import load_image
from convlens.io.walk import (
    OUTPUT_MARKER,
    Exclusion,
    InputProblem,
    file_problem,
    find_images,
    identity,
    top_level,
    walk_images,
)
from convlens.preprocessing import Geometry, Preprocessing

__all__ = [
    "LAYOUTS",
    "OUTPUT_MARKER",
    "Batch",
    "Dataset",
    "DatasetItem",
    "Entry",
    "ImageDataset",
    "batches",
    "content_key",
    "dataset_relative_path",
    "detect_layout",
    "no_images_message",
    "read_dataset",
    "scan_inputs",
    "unknown_labels",
]

LAYOUTS = ("auto", "imagefolder", "csv", "plain")


@dataclass(frozen=True)
class Entry:
    """One image file of a dataset, before decoding.

    Attributes:
        path: Where the file is (as given, joined with the walk).
        relpath: Its path relative to the dataset root (or as the user wrote it, for plain
            inputs), with forward slashes on every OS: stable across machines.
        label: The class it is labelled with, or ``None`` without labels.
    """

    path: Path
    relpath: str
    label: str | None = None


@dataclass
class Dataset:
    """What :func:`read_dataset` found: entries to decode and paths already known to be bad.

    Attributes:
        root: The folder (or CSV file) read.
        layout: ``imagefolder``, ``csv`` or ``plain``.
        entries: Image files, sorted by ``relpath``.
        problems: Broken links, unreadable folders, CSV rows without a path...
    """

    root: Path
    layout: str
    entries: list[Entry]
    problems: list[InputProblem] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """The distinct labels, sorted."""
        return sorted({e.label for e in self.entries if e.label is not None})

    def __len__(self) -> int:
        return len(self.entries)


def unknown_labels(dataset: Dataset | Iterable[Entry], known: Collection[str]) -> list[str]:
    """Labels (ImageFolder folder names, CSV labels) that are not in ``known``, sorted.

    The caller decides what to do, typically refusing the run with the list and the
    model's labels, since a folder called ``cats`` will never match ``tabby``.
    """
    entries = dataset.entries if isinstance(dataset, Dataset) else dataset
    known_set = set(known)
    return sorted({e.label for e in entries if e.label is not None and e.label not in known_set})


# ------------------------------------------------------------------------- finding files


def _posix(path: Path | str) -> str:
    return Path(path).as_posix()


def scan_inputs(paths: Sequence[str | os.PathLike[str]], *,
                exclude: Iterable[str | os.PathLike[str]] = ()) -> Dataset:
    """Plain layout: image files among ``paths`` and, recursively, in the folders among them.

    The one walker's :func:`~convlens.io.walk.find_images` (its rules: the module docstring
    of :mod:`convlens.io.walk`): the same files and problems as
    :func:`convlens.io.images.expand_inputs`. ``relpath`` is the path as written, joined
    with the walk (forward slashes).
    """
    images, problems = find_images(paths, exclude=exclude)
    return Dataset(Path("."), "plain", [Entry(p, _posix(p)) for p in images], problems)


def read_dataset(source: str | os.PathLike[str], *, layout: str = "auto",
                 exclude: Iterable[str | os.PathLike[str]] = ()) -> Dataset:
    """Find the images (and labels) of a dataset.

    Folders are walked by :func:`convlens.io.walk.walk_images`, under its rules.

    Args:
        source: A folder, or a CSV file with ``path`` and ``label`` columns.
        layout: ``auto`` (a ``.csv`` file is CSV; a folder with sub-folders and no images
            directly inside is ImageFolder; otherwise plain), ``imagefolder``, ``csv`` or
            ``plain``.
        exclude: Files or folders never read (a job's output folder).

    Returns:
        A :class:`Dataset`; entries sorted by ``relpath``.

    Raises:
        ConvlensError: ``source`` does not exist, the layout is unknown, or the CSV has
            no ``path`` column.
    """
    root = Path(os.fsdecode(os.fspath(source)))
    layout = detect_layout(root, layout)
    if layout == "csv":
        return _read_csv(root, exclude)
    if not root.is_dir():
        raise ConvlensError(f"{root}: the {layout} layout needs a folder")
    images, problems = walk_images(root, exclude=exclude)
    entries = [Entry(p, _posix(p.relative_to(root))) for p in images]
    if layout == "imagefolder":
        entries, misplaced = _labelled_by_folder(entries)
        problems.extend(misplaced)
    entries.sort(key=lambda e: e.relpath)
    return Dataset(root, layout, entries, problems)


def _labelled_by_folder(entries: list[Entry]) -> tuple[list[Entry], list[InputProblem]]:
    """ImageFolder: each image is labelled with its top folder under the root; an image
    directly in the root is a problem, not a guess."""
    labelled, problems = [], []
    for entry in entries:
        label, inside, _ = entry.relpath.partition("/")
        if inside:
            labelled.append(Entry(entry.path, entry.relpath, label))
        else:
            problems.append(InputProblem(
                entry.path, "image directly in the dataset folder; ImageFolder expects "
                            "ROOT/CLASS/image files (move it into its class folder)"))
    return labelled, problems


def detect_layout(source: str | os.PathLike[str], layout: str = "auto") -> str:
    """The layout :func:`read_dataset` will read ``source`` with (``auto`` resolved), from
    the source's top level only: cheap enough to check options against before a model loads.

    Raises:
        ConvlensError: ``source`` does not exist, or the layout is unknown.
    """
    root = Path(os.fsdecode(os.fspath(source)))
    if layout not in LAYOUTS:
        raise ConvlensError(f"unknown dataset layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if not root.exists():
        raise ConvlensError(f"{root}: not found; expected a folder of images or a CSV file "
                            "with path,label columns")
    return _detect_layout(root) if layout == "auto" else layout


def _detect_layout(root: Path) -> str:
    if root.is_file():
        return "csv" if root.suffix.lower() == ".csv" else "plain"
    images, folders = top_level(root)
    return "imagefolder" if folders and not images else "plain"


def _read_csv(path: Path, exclude: Iterable[str | os.PathLike[str]]) -> Dataset:
    """A ``path,label`` CSV (module docstring), refused whole when it cannot be meant.

    Refused with one line: a NUL byte (a binary or UTF-16 file; Python's csv module would
    read it into a path or a label), and a file listed twice with different labels (which
    one is true?), naming both lines. A row repeating an earlier one exactly (same file,
    same label) is read once: nothing is lost, and the image is not counted twice.
    """
    rules = Exclusion(exclude)
    problems: list[InputProblem] = []
    accepted = "expected UTF-8 text with a header line 'path,label'"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ConvlensError(f"{path}: cannot read the CSV ({error}); {accepted}") from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ConvlensError(f"{path}: line {line} holds a NUL byte (\\x00); {accepted} (a "
                            "binary file, or one saved as UTF-16? save it as UTF-8 CSV)")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as error:
        raise ConvlensError(f"{path}: cannot read the CSV ({error}); {accepted}") from None
    fields = reader.fieldnames or []
    if rows and "path" not in fields:
        raise ConvlensError(f"{path}: the CSV has no 'path' column (columns: "
                            f"{', '.join(map(str, fields))}); expected a header 'path,label'")
    entries = []
    seen: dict[Path, tuple[int, str | None]] = {}
    for number, row in rows:
        written = (row.get("path") or "").strip()
        if not written:
            problems.append(InputProblem(path, f"line {number}: empty path"))
            continue
        file = Path(written) if Path(written).is_absolute() else path.parent / written
        label = (row.get("label") or "").strip() or None
        resolved = identity(file)
        if resolved in seen:
            first, first_label = seen[resolved]
            if first_label == label:
                continue  # the same row again: read once
            raise ConvlensError(
                f"{path}: lines {first} and {number} list {written} with different labels "
                f"({first_label!r} and {label!r}); give each image one label (remove one of "
                "the lines)")
        seen[resolved] = (number, label)
        if rules.covers(file, resolved):
            continue
        entries.append(Entry(file, written.replace("\\", "/"), label))
    entries.sort(key=lambda e: e.relpath)
    return Dataset(path, "csv", entries, problems)


# ----------------------------------------------------------------------------- decoding


def content_key(relpath: str, digest: str, salt: str = "") -> str:
    """A short key for one item: its relative path, its content hash and a salt (a config).

    A renamed, edited or differently configured item gets a new key; two identical files
    at different paths keep different keys.
    """
    text = f"{salt}\0{relpath}\0{digest}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:20]


@dataclass
class DatasetItem:
    """One decoded (or skipped) image of a batch.

    Attributes:
        index: Position in the entries list given to :func:`batches`.
        entry: The file, its relpath and label.
        digest: SHA-256 of the file's bytes (hex).
        key: :func:`content_key` of relpath, digest and the salt.
        geometry: Where the network's input lies in the photo (``None`` when skipped).
    """

    index: int
    entry: Entry
    digest: str
    key: str
    geometry: Geometry | None = None

    @property
    def path(self) -> Path:
        return self.entry.path

    @property
    def relpath(self) -> str:
        return self.entry.relpath

    @property
    def label(self) -> str | None:
        return self.entry.label


@dataclass
class Batch:
    """What one step of :func:`batches` yields.

    Attributes:
        x: Preprocessed ``(n, C, H, W)`` float tensor (CPU) of the decoded items, or
            ``None`` when none decoded.
        items: The decoded items, in ``x``'s order.
        images: Their decoded display images (RGB, EXIF-rotated, full size), or empty when
            ``keep_images=False`` (then :meth:`image` decodes again on demand).
        problems: Files of this batch that could not be read, with the one-line reason.
        skipped: Items whose key was in ``skip`` (not decoded).
    """

    x: torch.Tensor | None
    items: list[DatasetItem]
    images: list[Image.Image]
    problems: list[InputProblem]
    skipped: list[DatasetItem]

    @property
    def size(self) -> int:
        """Items of the dataset this batch covers (decoded, bad and skipped)."""
        return len(self.items) + len(self.problems) + len(self.skipped)

    def image(self, position: int) -> Image.Image:
        """The display image of ``items[position]`` (decoded again if it was not kept)."""
        if self.images:
            return self.images[position]
        return load_image(self.items[position].path)


class ImageDataset(torch.utils.data.Dataset):
    """A map-style torch Dataset over entries: each item hashes, decodes and preprocesses one file.

    Items are ``("ok", DatasetItem, tensor, image)``, ``("skip", DatasetItem)`` or
    ``("bad", InputProblem)``; :func:`collate` groups them into a :class:`Batch`.
    """

    def __init__(self, entries: Sequence[Entry], preprocessing: Preprocessing, *,
                 salt: str = "", skip: Collection[str] = frozenset(),
                 keep_images: bool = True, max_pixels: int | None = None) -> None:
        self.entries = list(entries)
        self.preprocessing = preprocessing
        self.salt = salt
        self.skip = frozenset(skip)
        self.keep_images = keep_images
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        entry = self.entries[index]
        problem = file_problem(entry.path)
        if problem is not None:
            return ("bad", problem)
        try:
            digest = file_digest(entry.path)
        except OSError as error:
            return ("bad", InputProblem(entry.path, f"cannot read file ({error.strerror})"))
        item = DatasetItem(index, entry, digest, content_key(entry.relpath, digest, self.salt))
        if item.key in self.skip:
            return ("skip", item)
        try:
            tensor, item.geometry, image = self.preprocessing.load_file(
                entry.path, max_pixels=self.max_pixels, keep_photo=self.keep_images)
        except ConvlensError as error:
            reason = getattr(error, "reason", None) or str(error)
            return ("bad", InputProblem(entry.path, " ".join(reason.split())))
        return ("ok", item, tensor, image)


def file_digest(path: Path) -> str:
    """The SHA-256 (hex) of a file, read in 1 MiB blocks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def collate(samples: Sequence[tuple[Any, ...]]) -> Batch:
    """Group :class:`ImageDataset` items into a :class:`Batch` (the DataLoader's collate_fn)."""
    items, tensors, images, problems, skipped = [], [], [], [], []
    for sample in samples:
        if sample[0] == "ok":
            items.append(sample[1])
            tensors.append(sample[2])
            if sample[3] is not None:
                images.append(sample[3])
        elif sample[0] == "skip":
            skipped.append(sample[1])
        else:
            problems.append(sample[1])
    x = torch.stack(tensors) if tensors else None
    return Batch(x, items, images, problems, skipped)


def batches(entries: Sequence[Entry], preprocessing: Preprocessing, *, batch_size: int = 8,
            workers: int = 0, salt: str = "", skip: Collection[str] = frozenset(),
            keep_images: bool = True, max_pixels: int | None = None) -> Iterator[Batch]:
    """Decode ``entries`` in order, ``batch_size`` at a time, in ``workers`` processes.

    Args:
        entries: From :func:`read_dataset` or :func:`scan_inputs`.
        preprocessing: The classifier's (``classifier.preprocessing``): the same resize,
            crop and normalisation as :meth:`Classifier.prepare`.
        batch_size: Entries per batch (bad and skipped ones included, so batches line up
            with the entries list).
        workers: Decoding processes; 0 decodes in this process.
        salt: Mixed into every :attr:`DatasetItem.key` (e.g. a configuration fingerprint).
        skip: Keys not to decode (finished work); those items come back in ``skipped``.
        keep_images: Ship the decoded display images (full size) with the batch (needed
            to draw overlays); ``False`` saves the transfer from the workers, and for a
            JPEG decoded at reduced size for ``x``
            (:meth:`~convlens.preprocessing.Preprocessing.load_file`) a second,
            full decode.
        max_pixels: Refuse photos with more pixels (default: the library's cap, see
            :func:`convlens.io.images.load_image`); a refused photo is a recorded problem.

    Yields:
        One :class:`Batch` per ``batch_size`` entries; ``x`` stays on the CPU.
    """
    if batch_size < 1:
        raise ConvlensError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ConvlensError(f"workers must be 0 (decode in this process) or more, got {workers}")
    dataset = ImageDataset(entries, preprocessing, salt=salt, skip=skip, keep_images=keep_images,
                           max_pixels=max_pixels)
    if not len(dataset):
        return iter(())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=workers, collate_fn=collate)
    return iter(loader)


def no_images_message(data: str | os.PathLike[str], dataset: Any) -> str:
    """The empty-dataset error, worded as ``convlens explain`` words an empty folder.

    One line for the audit and the reference sets alike: where no image was found and the
    first problem met, if any.
    """
    if dataset.layout == "csv":
        where = "the CSV (no row with an image path under its header 'path,label')"
    else:
        where = "folder or its sub-folders (hidden files and convlens output folders skipped)"
    first = dataset.problems[0] if dataset.problems else None
    known = (f"; {len(dataset.problems)} problem(s), the first: {first.path}: {first.reason}"
             if first is not None else "")
    return f"{data}: no images found in {where}{known}"


def dataset_relative_path(path: Path, root: Path, known: dict[str, str]) -> str:
    """``path`` as a record names it: ``known[path]`` if given, else relative to the dataset's
    folder (the CSV's folder for a CSV), else as given (POSIX separators)."""
    if str(path) in known:
        return known[str(path)]
    base = root if root.is_dir() else root.parent
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return Path(path).as_posix()
