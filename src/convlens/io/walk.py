"""Finding image files: the one folder walker behind every convlens entry point.

``convlens explain`` and ``predict``, :func:`convlens.explain`, the audit, evaluation with an
engine, the concept and reference sets and the correction's training data all find their
images here (:func:`find_images` for the paths a user named, :func:`walk_images` for one
folder), so a folder gives the same files and the same problems whoever reads it. The rules
(docs/architecture.md, "Finding images"):

* **Image files** are names with an extension in :data:`IMAGE_EXTENSIONS`, in any case
  (``B.JPG`` counts); only the name is looked at, the content is checked when decoded.
* **Hidden entries** (names starting with ``.``) are skipped, files and folders alike; a
  file the user names explicitly is kept even when hidden.
* **Symbolic links to folders are never followed**, so a link loop cannot hang a walk and
  no image is read twice. A link whose target lies inside the folder being walked is
  skipped silently (its images are read by their real path); one leading outside it is
  recorded as a problem (pass its target instead). Links to files are read.
* **Output folders are never read**: a folder holding :data:`OUTPUT_MARKER` (convlens puts
  one in every output folder it creates) and the ``exclude`` paths (a job's own output
  folder) are skipped with everything below them; a named one is recorded as a problem.
* **Problems are recorded, not raised**: a broken link with an image name, an image name
  that is not a regular file (a pipe, a device), an unreadable folder, a named path that is
  missing or not an image, a named folder without images. Each is an :class:`InputProblem`
  with the reason, so a batch job reads what it can and reports the rest.
* **Order is the sorted path text** (forward slashes), the same on every OS and file
  system; a file reached twice (named twice, or named and inside a named folder) is listed
  once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from convlens.files import OUTPUT_MARKER

__all__ = [
    "IMAGE_EXTENSIONS",
    "OUTPUT_MARKER",
    "Exclusion",
    "InputProblem",
    "file_problem",
    "find_images",
    "identity",
    "is_image_file",
    "top_level",
    "walk_images",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""File extensions (lower case, with the dot) that count as image files."""

PathLike = str | os.PathLike[str]

OUTPUT_FOLDER = "is a convlens output folder (or inside one); not read as input"


@dataclass(frozen=True)
class InputProblem:
    """An input path that yielded no images, and why; reported instead of raised.

    Attributes:
        path: The path as the user gave it (or the sub-folder that could not be read).
        reason: What went wrong, in words.
    """

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def is_image_file(path: PathLike) -> bool:
    """Whether ``path`` has an image file extension (case-insensitive).

    Only the name is looked at, so this is cheap enough for walking large folders; the
    content is checked later, by :func:`convlens.io.images.load_image`.

    Args:
        path: A file path; it need not exist.

    Returns:
        True for .jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff and .webp.

    Example:
        >>> is_image_file("holiday/IMG_0001.JPG"), is_image_file("notes.txt")
        (True, False)
    """
    name = os.path.basename(os.fsdecode(os.fspath(path)))  # no pathlib: called per file
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def identity(path: Path) -> Path:
    """A canonical key for one file reached by different spellings (links, ``..``)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


class Exclusion:
    """The ``exclude`` paths of a walk, resolved once: files and folders never read."""

    def __init__(self, paths: Iterable[PathLike] = ()) -> None:
        self.paths = {identity(_as_path(p)) for p in paths}

    def covers(self, path: Path, resolved: Path | None = None) -> bool:
        """Whether ``path`` (already resolved: ``resolved``) is or lies in an excluded path."""
        if not self.paths:
            return False
        resolved = identity(path) if resolved is None else resolved
        return resolved in self.paths or any(p in resolved.parents for p in self.paths)


def file_problem(path: Path) -> InputProblem | None:
    """Why ``path`` cannot be read as an image file, or ``None`` for a regular file.

    A broken symbolic link names its missing target; a pipe, socket or device is refused
    before anything tries to read it (a read could block forever).
    """
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return InputProblem(path, f"broken symbolic link (its target {target} does "
                                      "not exist)")
        return InputProblem(path, "not found")
    except (OSError, ValueError) as error:
        return InputProblem(path, f"cannot access path ({_reason(error)})")
    if not stat.S_ISREG(info.st_mode):
        return InputProblem(path, "not a regular file (device, pipe or socket)")
    return None


def walk_images(folder: PathLike, *, exclude: Iterable[PathLike] | Exclusion = (),
                recursive: bool = True) -> tuple[list[Path], list[InputProblem]]:
    """The image files in ``folder`` (and its sub-folders), under the module's rules.

    This is the one place convlens lists a folder of images.

    Args:
        folder: The folder to walk; the paths returned start with it as written.
        exclude: Files and folders never read (a job's output folder), or an
            :class:`Exclusion` made once for several walks.
        recursive: Also walk sub-folders (never symbolic links to folders).

    Returns:
        ``(images, problems)``: the image files sorted by path text, and the problems met
        (broken links, non-regular files, unreadable folders, symbolic links to folders
        outside ``folder``; ``folder`` itself being an output folder), in walk order.

    Example:
        >>> images, problems = walk_images("photos", exclude=["photos/out"])  # doctest: +SKIP
    """
    rules = exclude if isinstance(exclude, Exclusion) else Exclusion(exclude)
    images, problems = _walk(_as_path(folder), rules, recursive)
    return [path for path, _ in images], problems


def _walk(root: Path, rules: Exclusion, recursive: bool
          ) -> tuple[list[tuple[Path, Path]], list[InputProblem]]:
    """:func:`walk_images` with each image's real path (what de-duplication compares)."""
    tree = identity(root)
    if rules.covers(root, tree) or (root / OUTPUT_MARKER).exists():
        return [], [InputProblem(root, OUTPUT_FOLDER)]
    images: list[tuple[Path, Path]] = []
    problems: list[InputProblem] = []
    pending = [(root, tree)]
    while pending:
        listing = _list_folder(*pending.pop(), rules, tree, recursive)
        images.extend(listing.images)
        problems.extend(listing.problems)
        pending.extend(reversed(listing.folders))  # depth first, in name order
    return sorted(images, key=lambda pair: _order(pair[0])), problems


def top_level(folder: PathLike) -> tuple[list[Path], list[Path]]:
    """The image files directly in ``folder`` and the sub-folders a walk would enter.

    Only ``folder`` itself is listed (cheap: what a dataset's layout is told from), under
    the same rules as :func:`walk_images`; an output folder gives nothing.
    """
    root = _as_path(folder)
    tree = identity(root)
    if (root / OUTPUT_MARKER).exists():
        return [], []
    listing = _list_folder(root, tree, Exclusion(), tree, recursive=True)
    return sorted((path for path, _ in listing.images), key=_order), [
        path for path, _ in listing.folders]


@dataclass
class _Listing:
    """One folder's share of a walk: its images and the sub-folders to enter (each with its
    real path), its problems."""

    images: list[tuple[Path, Path]] = field(default_factory=list)
    folders: list[tuple[Path, Path]] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)


def _list_folder(directory: Path, resolved: Path, rules: Exclusion, tree: Path,
                 recursive: bool) -> _Listing:
    """Apply the module's rules to the entries of one folder (``resolved``: its real path)."""
    listing = _Listing()
    try:
        with os.scandir(directory) as found:
            entries = sorted(found, key=lambda e: e.name)
    except OSError as error:
        listing.problems.append(InputProblem(directory, f"cannot read folder ({_reason(error)})"))
        return listing
    if any(e.name == OUTPUT_MARKER for e in entries):
        return listing  # an output folder inside the tree: skipped whole
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if _is_folder(entry):
            path, where = directory / entry.name, resolved / entry.name
            if entry.is_symlink():
                listing.problems.extend(_linked_folder(path, tree) if recursive else [])
            elif recursive and not rules.covers(path, where):
                listing.folders.append((path, where))
        elif is_image_file(entry.name):
            path, where = directory / entry.name, resolved / entry.name
            link = entry.is_symlink()
            real = identity(path) if link else where
            if rules.covers(path, real):
                continue
            # a plain regular file is known from the listing; anything else is looked at
            problem = file_problem(path) if link or not _is_regular(entry) else None
            if problem is None:
                listing.images.append((path, real))
            else:
                listing.problems.append(problem)
    return listing


def find_images(paths: Sequence[PathLike] | PathLike, *,
                exclude: Iterable[PathLike] = (),
                recursive: bool = True) -> tuple[list[Path], list[InputProblem]]:
    """The image files among ``paths`` and in the folders among them (:func:`walk_images`).

    Bad inputs do not raise: a missing path, a named file that is not an image (or lies in
    an excluded folder), a named folder without images, and whatever the walks met each
    become an :class:`InputProblem`, so a batch job can process what it found and report
    the rest.

    Args:
        paths: Files and folders. A single ``str`` or path is treated as a one-item list.
        exclude: Files and folders never read (a job's output folder).
        recursive: Also search sub-folders of the folders given.

    Returns:
        ``(images, problems)``: the image files, each once, sorted by path text, and the
        problems in input order.

    Example:
        >>> images, problems = find_images(["cat.jpg", "holiday/"])  # doctest: +SKIP
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    rules = Exclusion(exclude)
    found: dict[Path, Path] = {}
    problems: list[InputProblem] = []
    for raw in paths:
        path = _as_path(raw)
        images, issues = (_named_folder(path, rules, recursive) if _is_dir(path)
                          else _named_file(path, rules))
        problems.extend(issues)
        for image, real in images:
            found.setdefault(real, image)
    return sorted(found.values(), key=_order), problems


def _named_folder(folder: Path, rules: Exclusion, recursive: bool
                  ) -> tuple[list[tuple[Path, Path]], list[InputProblem]]:
    """A folder the user named: walked; one where nothing was found is a problem too."""
    images, problems = _walk(folder, rules, recursive)
    if not images and not problems:
        where = "in folder or its sub-folders" if recursive else "directly in folder"
        problems.append(InputProblem(folder, f"no images found {where} (looked for "
                                             f"{_extensions()}; hidden files and convlens "
                                             "output folders skipped)"))
    return images, problems


def _named_file(path: Path, rules: Exclusion
                ) -> tuple[list[tuple[Path, Path]], list[InputProblem]]:
    """A file the user named: kept even when hidden, if it is a readable image file."""
    problem = file_problem(path)
    if problem is None and not is_image_file(path):
        problem = InputProblem(path, f"not an image file (extension {path.suffix!r}); "
                                     f"expected one of {_extensions()}")
    if problem is None and rules.covers(path):
        problem = InputProblem(path, "is inside the output folder; not read as input")
    return ([], [problem]) if problem is not None else ([(path, identity(path))], [])


def _linked_folder(path: Path, tree: Path) -> list[InputProblem]:
    """A symbolic link to a folder, not followed: a problem only when it leads outside."""
    target = identity(path)
    if target == tree or tree in target.parents:
        return []  # its images are read by their real path (or it is a loop)
    return [InputProblem(path, "symbolic link to a folder outside the folder read, not "
                               "followed; pass its target instead")]


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows links: a link to a folder is a folder here
    except OSError:
        return False


def _is_regular(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)  # from the listing: no system call
    except OSError:
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _as_path(raw: PathLike) -> Path:
    return Path(os.fsdecode(os.fspath(raw)))


def _order(path: Path) -> str:
    return path.as_posix()


def _reason(error: BaseException) -> str:
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(reason).split())


def _extensions() -> str:
    return ", ".join(sorted(IMAGE_EXTENSIONS))
