"""What a correction reads from an audit: ``audit.json``, one strategy, the labelled images.

Every correction method and the evidence start from the same three things, so they are read
here once: the audit's content and folder (from an ``Audit`` or its folder), the chosen
strategy's entry, and the audit's images with a label (paths made absolute against the
audited folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from convlens.auditing.run import Audit
from convlens.errors import CorrectionError


def audit_data(audit: Any) -> tuple[dict[str, Any], Path]:
    """``audit.json``'s content and the audit's folder, from an Audit or its folder."""
    if isinstance(audit, Audit):
        return audit.data, audit.out
    folder = Path(os.fspath(audit))
    if not (folder / "audit.json").is_file():
        raise CorrectionError(f"{folder} holds no audit.json; give the folder `convlens audit` "
                              "wrote (--out), or the Audit object cl.audit returned")
    return Audit(None, folder).data, folder


def strategy_entry(data: dict[str, Any], strategy: int) -> dict[str, Any]:
    """Strategy ``strategy`` of ``audit.json``; an unknown id lists the known ones."""
    for entry in data.get("strategies") or []:
        if entry.get("id") == strategy:
            return entry
    ids = ", ".join(str(e.get("id")) for e in data.get("strategies") or []) or "none"
    raise CorrectionError(f"the audit has no strategy {strategy!r}; its strategies: {ids}")


def data_folder(data: dict[str, Any]) -> Path:
    """The folder the audit's image paths are relative to."""
    root = Path(data.get("data") or ".")
    return root if root.is_dir() else root.parent


def labelled_images(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The audit's image rows that carry a label, each with ``file``: its absolute path.

    Raises:
        CorrectionError: when no image is labelled (a correction contrasts a strategy's
            images with clean images of the same classes).
    """
    base = data_folder(data)
    rows = [{**image, "file": str(base / image["path"])} for image in data.get("images") or []
            if image.get("label") is not None]
    if not rows:
        raise CorrectionError("the audit's images have no labels; a correction contrasts a "
                              "strategy's images with clean images of the same classes: audit "
                              "a labelled folder (ImageFolder or CSV)")
    return rows
