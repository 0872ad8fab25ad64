"""A planted Clever-Hans case: a tiny CNN that learned "tag in the corner => square".

Synthetic 32x32 images of three shapes (circle, square, triangle) on a noisy dark
background. In training, half of the squares carry a watermark (a small bright tag in the
bottom-right corner) and no other image does, so the tag alone predicts "square" and is far
easier to see than a dim shape. The audit set adds tagged circles and triangles: the model
calls them squares (mistakes), and within the images predicted "square" there are two
strategies, the shape and the tag. Everything is seeded and trains in a few seconds on CPU.

``build()`` is the model factory for ``--model tests/planted_bias.py:build``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLASSES = ["circle", "square", "triangle"]
TAG_CLASS = "square"
SIZE = 32
TAG = 5  # tag side in pixels; it sits TAG_MARGIN from the bottom-right corner
TAG_MARGIN = 1


class PlantedNet(nn.Module):
    """Three conv blocks (32 -> 16 -> 8), global average pooling, a linear head."""

    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build() -> PlantedNet:
    """Factory for the CLI's ``--model file.py:build``."""
    return PlantedNet()


def _shape_mask(kind: str, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    r = rng.uniform(7, 9)
    # keep the shape away from the tag corner
    cy, cx = rng.uniform(r + 1, SIZE - r - 8), rng.uniform(r + 1, SIZE - r - 8)
    if kind == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == "square":
        return (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
    # triangle pointing up: inside three half-planes
    top, base = cy - r, cy + r * 0.8
    half = (yy - top) / (base - top) * r
    return (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)


def draw(kind: str, tagged: bool, rng: np.random.Generator) -> np.ndarray:
    """One uint8 RGB image ``(32, 32, 3)``."""
    image = rng.normal(40, 12, (SIZE, SIZE, 3))
    colour = rng.uniform(110, 170, 3)
    image[_shape_mask(kind, rng)] = colour
    if tagged:
        end = SIZE - TAG_MARGIN
        image[end - TAG:end, end - TAG:end] = 255
    return np.clip(image, 0, 255).astype(np.uint8)


def make_set(counts: dict[tuple[str, bool], int], seed: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``(N, 32, 32, 3)`` uint8, labels ``(N,)`` and tag flags ``(N,)`` in a fixed order."""
    rng = np.random.default_rng(seed)
    images, labels, tags = [], [], []
    for (kind, tagged), count in counts.items():
        for _ in range(count):
            images.append(draw(kind, tagged, rng))
            labels.append(CLASSES.index(kind))
            tags.append(tagged)
    return np.stack(images), np.array(labels), np.array(tags)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [0, 1] (the model's preprocessing)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def training_counts() -> dict[tuple[str, bool], int]:
    return {("circle", False): 300, ("triangle", False): 300,
            ("square", True): 150, ("square", False): 150}


def audit_counts() -> dict[tuple[str, bool], int]:
    return {("circle", False): 40, ("triangle", False): 40, ("square", False): 60,
            ("square", True): 20, ("circle", True): 20, ("triangle", True): 20}


@functools.lru_cache(maxsize=1)
def trained_model(seed: int = 0, epochs: int = 10) -> PlantedNet:
    """Train the planted model (seeded, a few seconds on one CPU thread)."""
    return train(training_counts(), seed=seed, epochs=epochs)


def train(counts: dict[tuple[str, bool], int], *, seed: int = 0, epochs: int = 10
          ) -> PlantedNet:
    """A PlantedNet trained on ``{(class, tagged): count}`` images (seeded)."""
    images, labels, _ = make_set(counts, seed=seed)
    x, y = to_tensor(images), torch.from_numpy(labels)
    torch.manual_seed(seed)
    model = PlantedNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    order_gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=order_gen)
        for start in range(0, len(x), 32):
            idx = order[start:start + 32]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


class PlantedCase:
    """The trained model, the audit images (uint8), their labels and tag flags.

    A plain class, not a dataclass: ``convlens.models.loading`` executes factory files
    without registering them in ``sys.modules``, where ``dataclasses`` looks up the module.
    """

    def __init__(self, model: PlantedNet, images: np.ndarray, labels: np.ndarray,
                 tagged: np.ndarray) -> None:
        self.model, self.images, self.labels, self.tagged = model, images, labels, tagged

    @property
    def x(self) -> torch.Tensor:
        return to_tensor(self.images)


def planted_case(seed: int = 0) -> PlantedCase:
    """The trained model and its audit set."""
    images, labels, tagged = make_set(audit_counts(), seed=seed + 1)
    return PlantedCase(trained_model(seed), images, labels, tagged)


def write_planted_folder(root, case: PlantedCase, *, every: int = 1) -> dict:
    """Write ``case`` as an ImageFolder under ``root/data`` (tagged files end in ``-tag``), its
    weights and labels beside it; returns the paths and the CLI model options that load it.

    ``every``: keep every k-th image (a smaller, quicker folder with the same strategies).
    """
    from pathlib import Path

    from PIL import Image
    from safetensors.torch import save_file

    root = Path(root)
    data = root / "data"
    for k in range(0, len(case.images), every):
        folder = data / CLASSES[case.labels[k]]
        folder.mkdir(parents=True, exist_ok=True)
        suffix = "-tag" if case.tagged[k] else ""
        Image.fromarray(case.images[k]).save(folder / f"{k:04d}{suffix}.png")
    save_file(case.model.state_dict(), root / "w.safetensors")
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    model = ["--model", f"{Path(__file__).resolve()}:build", "--weights",
             str(root / "w.safetensors"), "--labels", str(root / "labels.txt"),
             "--input-size", "32", "--mean", "0,0,0", "--std", "1,1,1", "--resize", "squash",
             "--device", "cpu"]
    return {"root": root, "data": data, "model": model, "case": case}


def planted_folder_with_a_broken_file(root, *, every: int) -> dict:
    """:func:`write_planted_folder` of :func:`planted_case` (every ``every``-th image) plus an
    unreadable ``circle/broken.png``: what the engine tests audit."""
    planted = write_planted_folder(root, planted_case(), every=every)
    (planted["data"] / "circle" / "broken.png").write_bytes(b"not a picture")
    return planted


def planted_classifier(planted: dict):
    """The Classifier for a planted folder (32 px, no normalisation), as the CLI options in
    :func:`write_planted_folder` build it."""
    import convlens as cl

    return cl.Classifier(planted["case"].model, labels=CLASSES, input_size=32, mean=(0, 0, 0),
                         std=(1, 1, 1), resize="squash", device="cpu")


def audited_by_cli(root) -> tuple[dict, object]:
    """The planted folder (every second image) audited through the CLI, as a user would:
    ``(write_planted_folder's dict, the audit's folder)``."""
    from cli_support import run

    planted = write_planted_folder(root, planted_case(), every=2)
    out = root / "audit"
    done = run("audit", str(planted["data"]), "--out", str(out), "--batch-size", "50",
               *planted["model"])
    assert done.returncode == 0, done.stderr
    return planted, out
