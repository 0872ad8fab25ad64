"""Results on disk: atomic file writes and an append-only, sharded record store.

Batch jobs over thousands of images must survive a full disk, a Ctrl-C or a ``kill -9`` at
any moment without losing finished work or leaving a half-written file that looks valid.
Two rules give that:

* **Every file is written atomically**: into a temporary file in the same folder, then
  renamed over the target with :func:`os.replace` (atomic on POSIX and Windows). A reader,
  or a rerun after a crash, sees the old file or the new one, never a truncated one.
  Temporaries are created with the permissions of a normal file (``0o666`` minus the
  umask; :func:`tempfile.mkstemp` would give ``0o600``). We do not ``fsync``: this protects
  against the process dying, not against the machine losing power.
* **Results are appended, never rewritten**: :class:`ResultStore` writes each batch's
  records as one new JSON-lines shard (``000001.jsonl``, ``000002.jsonl``...) plus
  optional numpy side arrays next to it (``000001.NAME.npy``). Bookkeeping per batch is
  O(batch), whatever the number of images done so far. A shard is written after its side
  arrays, so a shard on disk means its arrays are complete.

Every :class:`OSError` while writing (``ENOSPC``, ``EACCES``, a file where a folder should
be...) becomes one :class:`~convlens.errors.OutputError` naming the path and the cause.

Folders convlens creates for output carry a marker file, :data:`OUTPUT_MARKER`, so input
walkers (``convlens.io.datasets``) never read a job's own output as input.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from convlens.errors import OutputError, StoreMismatchError

__all__ = [
    "OUTPUT_MARKER",
    "ResultStore",
    "atomic_output",
    "config_fingerprint",
    "ensure_folder",
    "mark_output_folder",
    "remove_stale_temporaries",
    "write_array_atomic",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

OUTPUT_MARKER = ".convlens-output"
"""Name of the empty marker file in every output folder convlens creates."""

_TEMP_TAG = ".convlens-tmp"
_SHARD = re.compile(r"^(\d{6,})\.jsonl$")


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


_NOT_A_FOLDER = "is a file, not a folder; remove it or choose another output folder"


def _output_error(error: OSError, path: Path) -> OutputError:
    return OutputError(path, _reason(error, path))


# --------------------------------------------------------------- atomic writes


def ensure_folder(folder: str | os.PathLike[str], *, writable: bool = False) -> Path:
    """Create ``folder`` (and its parents) if needed; an OutputError if it cannot exist.

    The one check of output folders: jobs call it, and the CLI's ``prepare_out`` wraps it
    to name the option in its one-line error.

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
        raise OutputError(folder, _NOT_A_FOLDER)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(folder, _NOT_A_FOLDER) from None
    except OSError as error:
        raise _output_error(error, folder) from None
    if writable:
        probe = folder / f".convlens-probe.{secrets.token_hex(4)}{_TEMP_TAG}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as error:
            raise _output_error(error, folder) from None
        _discard(probe)
    return folder


def _temporary(path: Path) -> Path:
    """A fresh temporary name next to ``path`` that keeps its extension (for PIL's save)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TEMP_TAG}{path.suffix}")


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; rename it over ``path`` on success.

    The temporary lies in the same folder and ends with the same extension, so writers
    that choose a format by extension (``PIL.Image.save``) work. If the block raises, the
    temporary is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_output(out / "cat.png") as temporary:  # doctest: +SKIP
        ...     image.save(temporary)

    Raises:
        OutputError: On any OSError from the block or the rename (full disk, permissions...).
    """
    path = Path(path)
    ensure_folder(path.parent)
    temporary = _temporary(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        _discard(temporary)
        raise _output_error(error, path) from None
    except BaseException:
        _discard(temporary)
        raise


def _discard(temporary: Path) -> None:
    with suppress(OSError):
        temporary.unlink(missing_ok=True)


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


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2
                      ) -> Path:
    """Write ``data`` as UTF-8 JSON (non-ASCII kept readable) atomically; returns ``path``."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")


def write_array_atomic(path: str | os.PathLike[str], array: np.ndarray | Mapping[str, np.ndarray]
                       ) -> Path:
    """Save one array (``.npy``) or a mapping of named arrays (``.npz``) atomically.

    No pickling: object arrays are refused by numpy (``allow_pickle=False``).
    """
    buffer = io.BytesIO()
    if isinstance(array, Mapping):
        np.savez(buffer, **{k: np.asarray(v) for k, v in array.items()})
    else:
        np.save(buffer, np.asarray(array), allow_pickle=False)
    return write_bytes_atomic(path, buffer.getvalue())


def mark_output_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` as a convlens output folder: with the :data:`OUTPUT_MARKER` file.

    Dataset walkers skip marked folders, so a job never reads its own output. Returns the
    folder. Raises OutputError when it cannot be created.
    """
    folder = ensure_folder(folder)
    marker = folder / OUTPUT_MARKER
    if not marker.exists():
        write_bytes_atomic(marker, b"written by convlens; folders with this file are not read "
                                   b"as input\n")
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


# ------------------------------------------------------------------- the store


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-serialisable configuration (key order ignored)."""
    text = json.dumps(config, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, "(not set)"), new.get(key, "(not set)")
        if json.dumps(before, sort_keys=True, default=str) != json.dumps(
                after, sort_keys=True, default=str):
            lines.append(f"{key}: {before!r} -> {after!r}")
    return lines


class ResultStore:
    """An append-only store of JSON records in shards, for one configuration.

    Layout of ``folder`` (created, marked with :data:`OUTPUT_MARKER`)::

        config.json      the configuration and its fingerprint (written once)
        summary.json     a small summary the job rewrites atomically (O(1) in the records)
        000001.jsonl     one shard per :meth:`append`: one JSON record per line
        000001.NAME.npy  optional side arrays of that shard (e.g. float16 maps)

    Reopening a folder created for a different configuration raises
    :class:`~convlens.errors.StoreMismatchError` listing what differs, unless
    ``overwrite=True``, which deletes the stored results first. Records carrying a
    ``"key"`` are finished work: :meth:`done_keys` lists them so a rerun can skip them.

    To read every record: ``ResultStore.open(folder).records()`` (no configuration needed),
    or read the ``*.jsonl`` files in name order, one JSON object per line.

    Args:
        folder: Where the store lives.
        config: JSON-serialisable description of what produced the records (model,
            methods, options...). Compared by :func:`config_fingerprint`.
        overwrite: Delete existing results of this store (any configuration) first.

    Raises:
        StoreMismatchError: ``folder`` holds results of another configuration.
        OutputError: ``folder`` cannot be created or written.
    """

    def __init__(self, folder: str | os.PathLike[str], config: Mapping[str, Any] | None, *,
                 overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.config = dict(config) if config is not None else None
        self.fingerprint = config_fingerprint(self.config) if self.config is not None else None
        if overwrite and self.folder.exists():
            self._clear()
        if self.config is not None:
            mark_output_folder(self.folder)
            remove_stale_temporaries(self.folder)
            self._check_config()
        self._keys: set[str] | None = None
        self._next = self._last_index() + 1

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> ResultStore:
        """Open an existing store read-only, whatever its configuration."""
        store = cls(folder, None)
        config_path = store.folder / "config.json"
        if config_path.is_file():
            stored = json.loads(config_path.read_text(encoding="utf-8"))
            store.config, store.fingerprint = stored.get("config"), stored.get("fingerprint")
        return store

    # -- configuration

    def _clear(self) -> None:
        if not self.folder.is_dir():
            raise OutputError(self.folder, _NOT_A_FOLDER)
        try:
            shutil.rmtree(self.folder)
        except OSError as error:
            raise _output_error(error, self.folder) from None

    def _check_config(self) -> None:
        path = self.folder / "config.json"
        if not path.is_file():
            write_json_atomic(path, {"fingerprint": self.fingerprint, "config": self.config})
            return
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = {}
        if stored.get("fingerprint") == self.fingerprint:
            return
        differences = _differences(stored.get("config") or {}, self.config or {})
        listed = "; ".join(differences) or "the stored configuration is unreadable"
        raise StoreMismatchError(
            f"{self.folder.parent} holds results of a different configuration ({listed}); "
            "pass --overwrite (overwrite=True) to replace them, or choose another output folder"
        )

    # -- shards

    def shards(self) -> list[Path]:
        """The shard files, oldest first."""
        try:
            names = [entry.name for entry in self.folder.iterdir()]
        except OSError:
            return []
        return sorted((self.folder / n for n in names if _SHARD.match(n)),
                      key=lambda p: int(_SHARD.match(p.name).group(1)))  # type: ignore[union-attr]

    def _last_index(self) -> int:
        shards = self.shards()
        return int(_SHARD.match(shards[-1].name).group(1)) if shards else 0  # type: ignore[union-attr]

    def next_shard(self) -> Path:
        """The path the next :meth:`append` will write (side arrays go next to it)."""
        return self.folder / f"{self._next:06d}.jsonl"

    def array_path(self, shard: str | os.PathLike[str], name: str) -> Path:
        """Where side array ``name`` of ``shard`` lives: ``000001.NAME.npy`` (or ``.npz``)."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"side array names are letters, digits, _ and -; got {name!r}")
        return Path(shard).with_suffix(f".{name}.npy")

    def append(self, records: Sequence[Mapping[str, Any]],
               arrays: Mapping[str, np.ndarray | Mapping[str, np.ndarray]] | None = None
               ) -> Path:
        """Write ``records`` (and their side arrays) as one new shard; returns the shard path.

        Side arrays are written first, then the shard, each atomically: a crash leaves
        either the complete shard or no shard (orphan arrays are overwritten by the next
        append). A mapping value is saved as ``.npz`` with its keys, an array as ``.npy``.
        """
        shard = self.next_shard()
        for name, value in (arrays or {}).items():
            path = self.array_path(shard, name)
            if isinstance(value, Mapping):
                path = path.with_suffix(".npz")
            write_array_atomic(path, value)
        lines = [json.dumps(dict(r), ensure_ascii=False, separators=(",", ":")) for r in records]
        write_text_atomic(shard, "".join(line + "\n" for line in lines))
        self._next += 1
        if self._keys is not None:
            self._keys.update(r["key"] for r in records if "key" in r)
        return shard

    def read_array(self, shard: str | os.PathLike[str], name: str) -> Any:
        """Side array ``name`` of ``shard``: an ndarray (``.npy``) or a dict of them (``.npz``)."""
        path = self.array_path(shard, name)
        if path.is_file():
            return np.load(path, allow_pickle=False)
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}

    def shard_records(self, shard: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """The records of one shard."""
        text = Path(shard).read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record, shard by shard, in the order appended (streamed, not all in memory).

        Several records may share a key within one shard (one image, several targets);
        a key already seen in an earlier shard (two processes wrote the same item) is
        skipped in later ones.
        """
        seen: set[str] = set()
        for shard in self.shards():
            keys = set()
            for record in self.shard_records(shard):
                key = record.get("key")
                if key is not None:
                    if key in seen:
                        continue
                    keys.add(key)
                yield record
            seen |= keys

    def done_keys(self) -> set[str]:
        """Keys of every stored record (read once, then kept up to date by :meth:`append`)."""
        if self._keys is None:
            self._keys = {r["key"] for r in self.records() if "key" in r}
        return set(self._keys)

    # -- summary

    @property
    def summary_path(self) -> Path:
        return self.folder / "summary.json"

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Replace ``summary.json`` atomically (keep it small: it is rewritten per batch)."""
        return write_json_atomic(self.summary_path, dict(summary))

    def summary(self) -> dict[str, Any]:
        """The last summary written, or ``{}``."""
        try:
            return json.loads(self.summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
