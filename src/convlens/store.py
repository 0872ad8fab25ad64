"""Results on disk: an append-only, sharded record store (files written by :mod:`convlens.files`).

Batch jobs over thousands of images must survive a full disk, a Ctrl-C or a ``kill -9`` at
any moment without losing finished work or leaving a half-written file that looks valid.
Two rules give that:

* **Every file is written atomically** (:mod:`convlens.files`, re-exported here): a reader,
  or a rerun after a crash, sees the old file or the new one, never a truncated one.
* **Results are appended, never rewritten**: :class:`ResultStore` writes each batch's
  records as one new JSON-lines shard (``000001.jsonl``, ``000002.jsonl``...) plus
  optional numpy side arrays next to it (``000001.NAME.npy``). Bookkeeping per batch is
  O(batch), whatever the number of images done so far. A shard is written after its side
  arrays, so a shard on disk means its arrays are complete. Each append holds the
  folder's lock and takes the first shard number not on disk, so two writers into one
  store (which the commands' folder lock already prevents) cannot replace each other's
  shards.

Every :class:`OSError` while writing (``ENOSPC``, ``EACCES``, a file where a folder should
be...) becomes one :class:`~convlens.errors.OutputError` naming the path and the cause.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convlens.errors import OutputError, StoreMismatchError
from convlens.files import (
    NOT_A_FOLDER,
    OUTPUT_MARKER,
    atomic_output,
    ensure_folder,
    folder_lock,
    mark_output_folder,
    output_error,
    remove_stale_temporaries,
    write_array_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

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

_SHARD = re.compile(r"^(\d{6,})\.jsonl$")
_STORE_FILE = re.compile(r"^(\d{6,}\.(jsonl|[A-Za-z0-9_-]+\.np[yz])|config\.json|summary\.json)$")


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
        """Delete the store's own files (shards, arrays, config, summary), nothing else.

        A file a user put into the folder (``store/thesis.tex``) survives; the folder stays.
        """
        if not self.folder.is_dir():
            raise OutputError(self.folder, NOT_A_FOLDER)
        try:
            for entry in list(self.folder.iterdir()):
                if entry.is_file() and _STORE_FILE.match(entry.name):
                    entry.unlink()
        except OSError as error:
            raise output_error(error, self.folder) from None

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
        if [line.split(":")[0] for line in differences] == ["batch_size"]:
            stored_size = (stored.get("config") or {}).get("batch_size")
            raise StoreMismatchError(
                f"{self.folder.parent} holds results computed with batch size {stored_size}; "
                "results differ in the last digits between batch sizes, so a resume keeps "
                f"the stored one: rerun with --batch-size {stored_size} (batch_size="
                f"{stored_size}), or pass --overwrite (overwrite=True) to start again")
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
        with folder_lock(self.folder, wait=True, what="convlens store"):
            while self.next_shard().exists():  # another writer took this number
                self._next += 1
            shard = self.next_shard()
            for name, value in (arrays or {}).items():
                path = self.array_path(shard, name)
                if isinstance(value, Mapping):
                    path = path.with_suffix(".npz")
                write_array_atomic(path, value)
            lines = [json.dumps(dict(r), ensure_ascii=False, separators=(",", ":"))
                     for r in records]
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
