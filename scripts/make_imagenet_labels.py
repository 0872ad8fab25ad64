"""Write ``src/convlens/data/imagenet_classes.txt`` from torchvision's offline metadata.

Run once, by hand, when the file needs regenerating (never at run time)::

    python scripts/make_imagenet_labels.py

The 1000 ImageNet-1k class names come from the ``categories`` metadata that torchvision
ships inside its package (no download happens), one name per line in class-index order.
convlens itself never imports torchvision; it reads the committed text file.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.models import ResNet50_Weights

OUT = Path(__file__).resolve().parents[1] / "src" / "convlens" / "data" / "imagenet_classes.txt"


def main() -> None:
    """Write the label file and check it has 1000 unique, single-line names."""
    categories: list[str] = list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    if len(categories) != 1000 or any("\n" in name or not name for name in categories):
        raise SystemExit(f"unexpected torchvision categories ({len(categories)} names)")
    OUT.write_text("\n".join(categories) + "\n", encoding="utf-8")
    print(f"wrote {len(categories)} labels ({len(set(categories))} unique) to {OUT}")


if __name__ == "__main__":
    main()
