"""Execute the example notebooks; write executed copies and their key figures.

Usage::

    python examples/render.py                 # all notebooks -> docs/notebooks/, docs/images/
    python examples/render.py 01_attribution  # one of them

The notebooks in ``examples/`` are kept with their outputs stripped; this script runs each
top to bottom with the running interpreter's ipykernel (what ``tests/examples`` does in
``make test``), saves the executed copy to ``docs/notebooks/`` when it is under 1 MB, and
the last picture of the cell tagged ``key-figure`` to ``docs/images/<notebook>.png``.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MAX_EXECUTED_BYTES = 1_000_000


def execute(path: Path, timeout: int = 600):
    """Run a notebook in a fresh kernel (working directory: examples/); return it executed."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return notebook


def key_figure(notebook) -> bytes | None:
    """The PNG shown by the cell tagged ``key-figure`` (its last picture)."""
    for cell in notebook.cells:
        if "key-figure" in cell.get("metadata", {}).get("tags", []):
            pictures = [o["data"]["image/png"] for o in cell.get("outputs", [])
                        if "image/png" in o.get("data", {})]
            if pictures:
                return base64.b64decode(pictures[-1])
    return None


def main(names: list[str]) -> None:
    import nbformat

    paths = [EXAMPLES / f"{n}.ipynb" for n in names] or sorted(EXAMPLES.glob("*.ipynb"))
    for path in paths:
        notebook = execute(path)
        figure = key_figure(notebook)
        if figure is not None:
            (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
            (ROOT / "docs" / "images" / f"{path.stem}.png").write_bytes(figure)
        text = nbformat.writes(notebook)
        if len(text.encode()) < MAX_EXECUTED_BYTES:
            (ROOT / "docs" / "notebooks").mkdir(parents=True, exist_ok=True)
            (ROOT / "docs" / "notebooks" / path.name).write_text(text, encoding="utf-8")
        print(f"{path.name}: executed ({len(text.encode()) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv[1:])
