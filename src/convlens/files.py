"""Every file convlens writes: atomic writers and the output folders they write into.

A leaf module (docs/architecture.md, "Output folders"): it imports nothing of convlens but
:mod:`convlens.errors`, so every layer can write through it.

**Atomic writes.** Every file is written into a temporary file in the same folder, then
renamed over the target with :func:`os.replace` (atomic on POSIX and Windows); every writer
here, and so every file convlens writes, ends in :func:`atomic_output`. A reader,
or a rerun after a crash or a full disk, sees the old file or the new one, never a
truncated one. Temporaries have the permissions of a normal file (``0o666`` minus the
umask). We do not ``fsync``: this protects against the process dying, not against the
machine losing power. Every :class:`OSError` becomes one :class:`~convlens.errors.OutputError`
naming the path and the cause. Text is UTF-8; a file name that is not valid UTF-8 (Python
keeps its bytes as lone surrogates) is written as a ``\\udcXX`` escape, which JSON readers
turn back into the same name.

**Output folders.** A command that writes a folder *claims* it (:func:`claim_output`):

* a folder that exists, is not empty and was not made by convlens (no :data:`OUTPUT_MARKER`)
  is refused, naming what is in it: convlens never writes among a user's files;
* a folder that is one of the command's inputs, or holds one, is refused (``audit X --out X``);
* an exclusive lock (:data:`LOCK_FILE`, ``flock``) is held for the whole run; a second run
  into the same folder is refused naming the holder's PID. The kernel drops the lock when a
  process dies, even by ``kill -9``;
* every file written into the folder is first listed in its manifest (:data:`MANIFEST`, one
  JSON string per line, appended before the file is renamed into place). ``overwrite``
  deletes exactly the files the manifest lists, and the folders left empty by that, nothing
  else; a file that exists under a name convlens is about to write, but is not in the
  manifest, is refused rather than replaced.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convlens.errors import OutputBusyError, OutputError

__all__ = [
    "LOCK_FILE",
    "LazyList",
    "MANIFEST",
    "OUTPUT_MARKER",
    "OutputFolder",
    "atomic_output",
    "check_output",
    "claim_output",
    "ensure_folder",
    "folder_lock",
    "mark_output_folder",
    "remove_stale_temporaries",
    "remove_written",
    "save_image_atomic",
    "write_array_atomic",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

OUTPUT_MARKER = ".convlens-output"
"""Name of the marker file in every output folder convlens creates (input walkers skip them)."""
MANIFEST = ".convlens-manifest"
"""Name of the list of files convlens wrote into an output folder (JSON string per line)."""
LOCK_FILE = ".convlens-lock"
"""Name of the file a running command holds an exclusive lock on; it holds the holder's PID."""

_OWN_FILES = frozenset({OUTPUT_MARKER, MANIFEST, LOCK_FILE})
_TEMP_TAG = ".convlens-tmp"
_MARKER_TEXT = b"written by convlens; folders with this file are not read as input\n"


# ------------------------------------------------------------------------- errors


def _reason(error: OSError, path: Path) -> str:
    """The OS's reason for a failed write, in words, with what to do about it."""
    code = error.errno
    if code == errno.ENOSPC:
        return "no space left on the device; free some space or choose another output folder"
    if code == errno.EDQUOT:
        return "disk quota exceeded; free some space or choose another output folder"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied; choose a folder you can write to"
    if code == errno.EROFS:
        return "the file system is read-only; choose another output folder"
    if code == errno.ENOTDIR:
        return "a part of the path is a file, not a folder; choose another output folder"
    if code == errno.EEXIST or (code == errno.EISDIR and path.is_dir()):
        kind = "a folder" if path.is_dir() else "a file"
        return f"{kind} with that name is in the way; remove it or choose another output path"
    return f"{error.strerror or type(error).__name__}"


NOT_A_FOLDER = "is a file, not a folder; remove it or choose another output folder"


def output_error(error: OSError, path: Path) -> OutputError:
    """One :class:`OutputError` for an OSError raised while writing ``path``."""
    return OutputError(path, _reason(error, path))


def _discard(path: Path) -> None:
    with suppress(OSError):
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------- folders


def ensure_folder(folder: str | os.PathLike[str], *, writable: bool = False) -> Path:
    """Create ``folder`` (and its parents) if needed; an OutputError if it cannot exist.

    Args:
        folder: The output folder.
        writable: Also create and delete a probe file in it, so that an existing folder
            that cannot be written (no permission, read-only file system) is refused
            before any work rather than at the first result. The probe is named like a
            temporary of :func:`atomic_output`, so :func:`remove_stale_temporaries`
            deletes one a killed process left behind.

    Raises:
        OutputError: ``folder`` is an existing file, a parent is a file, the folder
            cannot be created (permissions, read-only or full file system), or, with
            ``writable``, a file cannot be created in it.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(folder, NOT_A_FOLDER)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(folder, NOT_A_FOLDER) from None
    except OSError as error:
        raise output_error(error, folder) from None
    if writable:
        probe = folder / f".convlens-probe.{secrets.token_hex(4)}{_TEMP_TAG}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as error:
            raise output_error(error, folder) from None
        _discard(probe)
    return folder


def mark_output_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` as a convlens output folder: with the :data:`OUTPUT_MARKER` file.

    Dataset walkers skip marked folders, so a job never reads its own output. Returns the
    folder. Raises OutputError when it cannot be created.
    """
    folder = ensure_folder(folder)
    marker = folder / OUTPUT_MARKER
    if not marker.exists():
        write_bytes_atomic(marker, _MARKER_TEXT)
    return folder


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete temporaries a killed process left in ``folder`` (not recursive); returns a count.

    Only files named by :func:`atomic_output` (``.NAME.XXXXXXXX.convlens-tmp.EXT``) are
    touched. Call it only when no other process writes into ``folder``.
    """
    removed = 0
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith(".") and _TEMP_TAG in entry.name:
            _discard(entry)
            removed += 1
    return removed


# --------------------------------------------------------------- atomic writes


def _temporary(path: Path) -> Path:
    """A fresh temporary name next to ``path`` that keeps its extension (for PIL's save)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TEMP_TAG}{path.suffix}")


def _put_in_place(temporary: Path, path: Path) -> None:
    """Rename a finished temporary over ``path``: the last step of every file convlens writes.

    The one place a result file comes into being (:func:`atomic_output` calls it, and every
    ``write_*_atomic`` and :func:`save_image_atomic` go through :func:`atomic_output`), so a
    test that wraps it sees every file a run writes (tests/test_one_writer.py). Only the
    manifest and the lock file are written otherwise: they are appended to and locked in
    place, never replaced.
    """
    os.replace(temporary, path)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; rename it over ``path`` on success.

    The temporary lies in the same folder and ends with the same extension, so writers
    that choose a format by extension (``PIL.Image.save``) work. If the block raises, the
    temporary is removed and ``path`` is left as it was. Inside a claimed output folder
    (:func:`claim_output`) the file is listed in the manifest before it is renamed into
    place, and a file of the same name that convlens did not write is refused.

    Example:
        >>> with atomic_output(out / "cat.png") as temporary:  # doctest: +SKIP
        ...     image.save(temporary)

    Raises:
        OutputError: On any OSError from the block or the rename (full disk, permissions...),
            or when ``path`` is a user's file in a claimed folder.
    """
    path = Path(path)
    ensure_folder(path.parent)
    owner = _claimed_folder_of(path)
    if owner is not None:
        owner.check_replaceable(path)
    temporary = _temporary(path)
    try:
        yield temporary
        if owner is not None:
            owner.record(path)
        _put_in_place(temporary, path)
    except OSError as error:
        _discard(temporary)
        if isinstance(error, OutputError):
            raise
        raise output_error(error, path) from None
    except BaseException:
        _discard(temporary)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (normal permissions); returns ``path``.

    Raises:
        OutputError: The file could not be written; ``path`` is unchanged.
    """
    path = Path(path)
    with atomic_output(path) as temporary:
        # O_EXCL: never follow a planted link; 0o666 & ~umask like any new file.
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
    return path


def encode_text(text: str) -> bytes:
    """UTF-8 bytes of ``text``; lone surrogates (undecodable file names) as ``\\udcXX`` escapes.

    In JSON the escape is the standard ``\\uXXXX`` form, so ``json.loads`` returns the same
    string and :func:`os.fsencode` of it the original bytes of the name.
    """
    return text.encode("utf-8", errors="backslashreplace")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (:func:`encode_text`); returns ``path``."""
    return write_bytes_atomic(path, encode_text(text))


class LazyList(Sequence[Any]):
    """A read-only list whose items are made when read: :func:`write_json_atomic` writes it
    item by item, so a JSON file with one entry per image never holds all of them in memory.

    Example:
        >>> rows = LazyList(3, lambda k: {"row": k})
        >>> rows[2], len(rows)
        ({'row': 2}, 3)
    """

    def __init__(self, length: int, item: Callable[[int], Any]) -> None:
        self._length = length
        self._item = item

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, at: Any) -> Any:
        if isinstance(at, slice):
            return [self[k] for k in range(*at.indices(self._length))]
        return self._item(range(self._length)[at])


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2
                      ) -> Path:
    """Write ``data`` as UTF-8 JSON atomically; returns ``path``.

    Non-ASCII text stays readable; non-finite floats become ``null`` (:func:`finite_json`).
    A :class:`LazyList` inside ``data`` is written item by item (with ``indent`` set), the
    bytes the same as for the list it stands for.
    """
    streams: list[LazyList] = []

    def placeholder(value: Any) -> str:
        if not isinstance(value, LazyList) or indent is None:
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        streams.append(value)
        return f"{_STREAM}{len(streams) - 1}{_STREAM}"

    def dumps(value: Any) -> str:
        return json.dumps(finite_json(value), indent=indent, ensure_ascii=False,
                          allow_nan=False, default=placeholder)

    text = dumps(data)
    if not streams:
        return write_text_atomic(path, text + "\n")
    pieces = text.split(json.dumps(_STREAM, ensure_ascii=False)[1:-1])
    with atomic_output(path) as temporary, open(temporary, "wb") as handle:
        # pieces: text, stream number + closing quote; the opening quote ends each text
        handle.write(encode_text(pieces[0][:-1]))
        for k in range(1, len(pieces), 2):
            stream = streams[int(pieces[k])]
            line_start = pieces[k - 1].rfind("\n") + 1
            depth = len(pieces[k - 1][line_start:]) - len(pieces[k - 1][line_start:].lstrip(" "))
            inner = "\n" + " " * (depth + indent)
            if len(stream) == 0:
                handle.write(b"[]")
            else:
                handle.write(b"[")
                for at, item in enumerate(stream):
                    handle.write(encode_text(("," if at else "") + inner
                                             + dumps(item).replace("\n", inner)))
                handle.write(encode_text("\n" + " " * depth + "]"))
            rest = pieces[k + 1][1:]  # after the closing quote
            handle.write(encode_text(rest[:-1] if k + 2 < len(pieces) else rest + "\n"))
    return Path(path)


_STREAM = "\x00convlens-lazy-list\x00"


def finite_json(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, infinities) replaced by ``None``.

    ``NaN`` and ``Infinity`` are not JSON: ``json.dumps`` writes them anyway and most
    readers (browsers, ``jq``) then refuse the whole file. ``null`` is what JSON has for
    "no number".
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(value) for value in data]
    return data


def write_array_atomic(path: str | os.PathLike[str], array: Any) -> Path:
    """Save one array (``.npy``) or a mapping of named arrays (``.npz``) atomically.

    No pickling: object arrays are refused by numpy (``allow_pickle=False``).
    """
    import numpy as np

    buffer = io.BytesIO()
    if isinstance(array, Mapping):
        np.savez(buffer, **{k: np.asarray(v) for k, v in array.items()})
    else:
        np.save(buffer, np.asarray(array), allow_pickle=False)
    return write_bytes_atomic(path, buffer.getvalue())


def save_image_atomic(image: Any, path: str | os.PathLike[str], **options: Any) -> Path:
    """Save a PIL image atomically; the format follows the extension unless ``format=`` says."""
    with atomic_output(path) as temporary:
        image.save(temporary, **options)
    return Path(path)


# ------------------------------------------------------------------- locking


@contextmanager
def folder_lock(folder: Path, *, wait: bool = False, what: str = "convlens") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (its :data:`LOCK_FILE`) for the block.

    Re-entrant within one process (a job may lock a folder its store locks again). Without
    ``fcntl`` (Windows), or on a file system that has no locks (some network mounts), no
    lock is taken: runs into one folder are then the user's to keep apart.

    Raises:
        OutputBusyError: Another process holds the lock (and ``wait`` is false); the message
            names its PID and command.
    """
    key = str(Path(folder).resolve())
    with _LOCKS_GUARD:
        held = _LOCKS.get(key)
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield
        finally:
            _release(key)
        return
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; documented
        yield
        return
    path = Path(folder) / LOCK_FILE
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise output_error(error, path) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as error:
        holder = _read_holder(handle)
        os.close(handle)
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise OutputBusyError(Path(folder), holder) from None
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            yield  # a file system without locks (some network mounts): as on Windows
            return
        raise output_error(error, path) from None
    os.ftruncate(handle, 0)
    os.pwrite(handle, f"{os.getpid()} {what}\n".encode(), 0)
    with _LOCKS_GUARD:
        _LOCKS[key] = [handle, 1]
    try:
        yield
    finally:
        _release(key)


def _release(key: str) -> None:
    with _LOCKS_GUARD:
        held = _LOCKS[key]
        held[1] -= 1
        if held[1] > 0:
            return
        del _LOCKS[key]
    with suppress(OSError):
        os.ftruncate(held[0], 0)
    os.close(held[0])  # closing the descriptor releases the flock


def _read_holder(handle: int) -> str:
    try:
        text = os.pread(handle, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return text


_LOCKS: dict[str, list[int]] = {}
_LOCKS_GUARD = threading.Lock()


# ------------------------------------------------------------------- claiming


@dataclass
class OutputFolder:
    """A claimed output folder: locked for this run, every file written into it listed.

    Attributes:
        path: The folder.
        written: Paths (relative, POSIX) listed in its manifest.
    """

    path: Path
    written: set[str] = field(default_factory=set)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    def relative(self, path: Path) -> str:
        return Path(os.path.abspath(path)).relative_to(self._root()).as_posix()

    def _root(self) -> Path:
        return Path(os.path.abspath(self.path))

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is listed in the manifest (written by convlens)."""
        return self.relative(path) in self.written

    def check_replaceable(self, path: Path) -> None:
        """Refuse to replace a file of the user's: one that exists but is not in the manifest."""
        if path.name in _OWN_FILES or self.owns(path):
            return
        if path.exists() or path.is_symlink():
            raise OutputError(path, f"it exists and convlens did not write it (it is not in "
                                    f"{self.manifest}); move it away or choose another "
                                    "output folder")

    def record(self, path: Path) -> None:
        """List ``path`` in the manifest (once) before it is put in place."""
        name = self.relative(path)
        if Path(name).name not in _OWN_FILES:
            self.list_names([name])

    def list_names(self, names: Iterable[str]) -> None:
        """Append the relative ``names`` not listed yet to the manifest, one JSON string a
        line (ASCII: surrogates and newlines escaped), in one write."""
        with self._guard:
            new = sorted(set(names) - self.written)
            if not new:
                return
            try:
                with open(self.manifest, "a", encoding="ascii") as stream:
                    stream.write("".join(json.dumps(name) + "\n" for name in new))
            except OSError as error:
                raise output_error(error, self.manifest) from None
            self.written.update(new)

    def read_manifest(self) -> set[str]:
        """The names listed in the manifest (a torn last line, from a crash, is skipped)."""
        try:
            text = self.manifest.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return set()
        except OSError as error:
            raise output_error(error, self.manifest) from None
        names = set()
        for line in text.splitlines():
            with suppress(ValueError):
                name = json.loads(line)
                if isinstance(name, str):
                    names.add(name)
        return names

    def delete_written(self) -> int:
        """Delete every file the manifest lists (inside the folder), then the folders emptied.

        Returns the number of files deleted. Files that are not listed are never touched.
        """
        root = self._root()
        deleted = 0
        emptied: set[Path] = set()
        for name in sorted(self.written):
            target = Path(os.path.abspath(root / name))
            if target == root or root not in target.parents:
                continue  # a hand-edited manifest cannot point outside the folder
            if target.is_file() or target.is_symlink():
                try:
                    target.unlink()
                except OSError as error:
                    raise output_error(error, target) from None
                deleted += 1
                emptied.update(p for p in target.parents if root in p.parents)
        for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
            with suppress(OSError):  # a folder still holding a user's file stays
                leftovers = {entry.name for entry in folder.iterdir()}
                if leftovers <= _OWN_FILES:  # nothing but a store's lock file, say
                    for own in leftovers:
                        (folder / own).unlink()
                    folder.rmdir()
        self.written.clear()
        try:
            self.manifest.unlink(missing_ok=True)
        except OSError as error:
            raise output_error(error, self.manifest) from None
        return deleted


_CLAIMED: dict[str, OutputFolder] = {}
_CLAIMED_GUARD = threading.Lock()


def _claimed_folder_of(path: Path) -> OutputFolder | None:
    if not _CLAIMED:
        return None
    absolute = Path(os.path.abspath(path))
    with _CLAIMED_GUARD:
        for parent in absolute.parents:
            owner = _CLAIMED.get(str(parent))
            if owner is not None:
                return owner
    return None


def _describe_entries(folder: Path, names: list[str]) -> str:
    shown = []
    for name in sorted(names)[:5]:
        shown.append(name + ("/" if (folder / name).is_dir() else ""))
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(repr(s) for s in shown) + more


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_not_input(folder: Path, inputs: Iterable[str | os.PathLike[str]],
                    option: str = "--out") -> None:
    """Refuse an output folder that is one of the inputs or contains one.

    An output folder *inside* an input folder is fine: walkers skip it (its marker).

    Raises:
        OutputError: ``folder`` is an input, or an input lies inside it.
    """
    out = Path(os.path.realpath(folder))
    for item in inputs:
        source = Path(os.path.realpath(item))
        if _inside(source, out):
            what = "is the input" if source == out else f"holds the input {item}"
            raise OutputError(folder, f"the output folder {what}: convlens would read (and "
                                      f"replace) its own results; choose another {option}")


def check_output(folder: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str]] = (),
                 option: str = "--out") -> Path:
    """Check that ``folder`` can be an output folder, before any work; returns it (created).

    The checks :func:`claim_output` starts with, for a CLI to run before it loads a model:
    not an input, writable, and either new, empty or made by convlens.

    Raises:
        OutputError: Any of those fails; the message says what to do.
    """
    path = Path(folder)
    check_not_input(path, inputs, option)
    existed = path.is_dir()
    ensure_folder(path, writable=True)
    if existed and not (path / OUTPUT_MARKER).exists():
        try:
            foreign = [e.name for e in path.iterdir() if e.name not in _OWN_FILES]
        except OSError as error:
            raise output_error(error, path) from None
        if foreign:
            raise OutputError(path, f"the folder is not empty and convlens did not make it (it "
                                    f"holds {_describe_entries(path, foreign)}); choose a new "
                                    f"or empty {option}: convlens never writes among your files")
    return path


def remove_written(path: str | os.PathLike[str]) -> bool:
    """Delete ``path`` if convlens wrote it: listed in its claimed folder's manifest (or, outside
    any claimed folder, always). Returns whether it was deleted."""
    path = Path(path)
    owner = _claimed_folder_of(path)
    if owner is not None and not owner.owns(path):
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as error:
        raise output_error(error, path) from None
    return True


@contextmanager
def claim_output(folder: str | os.PathLike[str], *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike[str]] = (), what: str = "convlens",
                 option: str = "--out") -> Iterator[OutputFolder]:
    """Claim ``folder`` for one run: checked, locked, marked, its writes listed.

    Args:
        folder: The output folder (created when missing).
        overwrite: Delete the files an earlier run listed in the manifest first.
        inputs: Files and folders the run reads; the output folder may not be one of them
            nor contain one.
        what: The command, written into the lock file so a refused second run can name it.
        option: The option that named the folder, for messages.

    Raises:
        OutputError: The folder cannot be written, is not empty and not convlens's, or is
            an input.
        OutputBusyError: Another process holds the folder.
    """
    path = check_output(folder, inputs=inputs, option=option)
    with folder_lock(path, what=what):
        owner = OutputFolder(path)
        if (path / OUTPUT_MARKER).exists() and not owner.manifest.exists():
            owner.list_names(_adopt(path))  # convlens 8 and earlier kept no manifest
        else:
            owner.written = owner.read_manifest()
        mark_output_folder(path)
        remove_stale_temporaries(path)
        if overwrite:
            owner.delete_written()
        key = str(Path(os.path.abspath(path)))
        with _CLAIMED_GUARD:
            outer = _CLAIMED.get(key)
            _CLAIMED[key] = owner
        try:
            yield owner
        finally:
            with _CLAIMED_GUARD:
                if outer is None:
                    _CLAIMED.pop(key, None)
                else:
                    _CLAIMED[key] = outer


_ADOPTED_SUFFIXES = {".png", ".jpg", ".jpeg", ".html", ".json", ".jsonl", ".npy", ".npz"}


def _adopt(folder: Path) -> set[str]:
    """Files of a folder marked by convlens 8 or earlier (no manifest) taken as convlens's.

    Those versions kept no list; a file a user added later cannot be told apart by name,
    so only the kinds of file convlens writes (pictures, pages, JSON, arrays) are adopted.
    Anything else (``thesis.tex``, ``ledger.csv``) stays the user's and is never deleted.
    """
    adopted = set()
    for entry in folder.rglob("*"):
        if (entry.is_file() and entry.name not in _OWN_FILES
                and entry.suffix.lower() in _ADOPTED_SUFFIXES and _TEMP_TAG not in entry.name):
            adopted.add(entry.relative_to(folder).as_posix())
    return adopted
