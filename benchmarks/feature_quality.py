"""Feature-visualization quality on the bundled EfficientNet-Lite0 (numbers for BENCHMARKS.md).

Two measured criteria (issue "convlens 3"):

1. **Channels beat photos.** For 8 channels of a middle layer, the channel's mean
   activation on its visualization must exceed the highest per-photo mean activation over
   the sample photos by at least 5 standard deviations of those per-photo means:
   ``z = (vis - max(photos)) / std(photos) >= 5``. Photos: the four bundled samples
   (:func:`convlens.io.samples.sample_images`), centre-cropped as the model expects. A
   stricter second reference uses 40 views of them (five crops at two scales, mirrored).
2. **Classes are recognised.** A class visualization (rendered with the standard
   transforms) is classified as its class with probability >= 0.9, and stays top-1 under
   random 8-pixel jitters (translations by -8..8 px with reflected borders; 10 draws).

Usage::

    python benchmarks/feature_quality.py                       # 224 px, 256 steps
    python benchmarks/feature_quality.py --steps 128 --out fq  # also saves the images

Exit code 1 when a criterion fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import convlens as cl
from convlens import objectives as obj
from convlens._hooks import HookSession, evaluation_mode
from convlens.io.samples import sample_images
from convlens.models.layers import resolve_layer

MIDDLE_LAYER = "blocks.8"
CHANNELS = list(range(8))
CLASSES = [1, 130, 281, 323, 980]  # goldfish, flamingo, tabby, monarch, volcano


def channel_means(clf: cl.Classifier, images01: torch.Tensor, layer: str) -> torch.Tensor:
    """Per image, every channel's mean activation ``(N, C)``; images in [0, 1]."""
    pre = clf.preprocessing
    mean = torch.tensor(pre.mean, device=images01.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=images01.device).view(1, -1, 1, 1)
    name, module = resolve_layer(clf.module, layer)
    with HookSession() as hooks, evaluation_mode(clf.module), torch.no_grad():
        capture = hooks.capture(module, name)
        clf.module((images01 - mean) / std)
    return capture.output.float().mean(dim=(2, 3))


def photo_views(clf: cl.Classifier) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample photos as the model sees them (N, 3, 224, 224) in [0, 1], and 40 views."""
    pre = clf.preprocessing
    photos = clf.preprocess(list(sample_images().values()))
    mean = torch.tensor(pre.mean, device=photos.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=photos.device).view(1, -1, 1, 1)
    photos01 = photos * std + mean
    views = []
    for image in sample_images().values():
        for shorter in (256, 320):
            width, height = image.size
            scale = shorter / min(width, height)
            resized = image.resize((round(width * scale), round(height * scale)))
            tensor = torch.from_numpy(np.asarray(resized).copy())
            tensor = tensor.permute(2, 0, 1).float().div(255)
            h, w = tensor.shape[1:]
            corners = [(0, 0), (0, w - 224), (h - 224, 0), (h - 224, w - 224),
                       ((h - 224) // 2, (w - 224) // 2)]
            for top, left in corners:
                crop = tensor[:, top:top + 224, left:left + 224]
                views += [crop, crop.flip(-1)]
    return photos01, torch.stack(views).to(photos01.device)


def jitter_top1(clf: cl.Classifier, images01: torch.Tensor, target: int, draws: int = 10,
                seed: int = 1) -> tuple[int, float]:
    """How many of ``draws`` random 8-px translations keep ``target`` top-1; min probability."""
    generator = torch.Generator().manual_seed(seed)
    pre = clf.preprocessing
    mean = torch.tensor(pre.mean, device=images01.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=images01.device).view(1, -1, 1, 1)
    padded = F.pad(images01, (8, 8, 8, 8), mode="reflect")
    kept, lowest = 0, 1.0
    height, width = images01.shape[-2:]
    for _ in range(draws):
        dy, dx = (int(v) for v in torch.randint(17, (2,), generator=generator))
        shifted = padded[..., dy:dy + height, dx:dx + width]
        probabilities = clf.logits((shifted - mean) / std).softmax(1)
        kept += int(probabilities.argmax(1).item() == target)
        lowest = min(lowest, float(probabilities[0, target]))
    return kept, lowest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--layer", default=MIDDLE_LAYER)
    parser.add_argument("--out", type=Path, default=None, help="Save the two grids here.")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (1 avoids thread thrashing on a shared machine).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clf = cl.load_model(device=args.device)
    print(f"model {clf.name} on {clf.device}; {args.steps} steps at {args.size} px, "
          f"seed {args.seed}")
    ok = True

    # 1. channels -------------------------------------------------------------------
    photos01, views01 = photo_views(clf)
    per_photo = channel_means(clf, photos01, args.layer)
    per_view = channel_means(clf, views01, args.layer)
    began = time.perf_counter()
    goals = [obj.channel(args.layer, k) for k in CHANNELS]
    res = cl.visualize(clf, goals, size=args.size, steps=args.steps, seed=args.seed)
    seconds = time.perf_counter() - began
    on_vis = channel_means(clf, res.images, args.layer)
    print(f"\n[channels] {args.layer}, channels {CHANNELS}: {seconds:.1f} s "
          f"({seconds / args.steps:.3f} s/step, batch {len(goals)})")
    print(f"{'ch':>3} {'vis':>8} {'photo max':>9} {'photo sd':>8} {'z(4 photos)':>11} "
          f"{'z(40 views)':>11}")
    zs = []
    for i, k in enumerate(CHANNELS):
        vis = float(on_vis[i, k])
        photos = per_photo[:, k]
        views = per_view[:, k]
        z = (vis - float(photos.max())) / float(photos.std())
        zv = (vis - float(views.max())) / float(views.std())
        zs.append(z)
        print(f"{k:>3} {vis:8.3f} {float(photos.max()):9.3f} {float(photos.std()):8.3f} "
              f"{z:11.1f} {zv:11.1f}")
    passed = min(zs) >= 5
    ok &= passed
    print(f"min z = {min(zs):.1f} (criterion >= 5): {'PASS' if passed else 'FAIL'}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        res.grid().save(args.out / "channels_grid.png")

    # 2. classes --------------------------------------------------------------------
    began = time.perf_counter()
    res = cl.visualize(clf, [obj.class_logit(c) for c in CLASSES], size=args.size,
                       steps=args.steps, seed=args.seed)
    seconds = time.perf_counter() - began
    print(f"\n[classes] {len(CLASSES)} classes: {seconds:.1f} s "
          f"({seconds / args.steps:.3f} s/step)")
    print(f"{'class':<22} {'p':>6} {'top-1':>6} {'jitter top-1':>12} {'min p jitter':>12}")
    probabilities = clf.logits((res.images - torch.tensor(clf.preprocessing.mean,
                                                          device=res.images.device
                                                          ).view(1, -1, 1, 1))
                               / torch.tensor(clf.preprocessing.std,
                                              device=res.images.device).view(1, -1, 1, 1)
                               ).softmax(1)
    for i, c in enumerate(CLASSES):
        p = float(probabilities[i, c])
        top1 = int(probabilities[i].argmax()) == c
        kept, lowest = jitter_top1(clf, res.images[i:i + 1], c)
        passed = p >= 0.9 and top1 and kept == 10
        ok &= passed
        print(f"{clf.label(c)[:22]:<22} {p:6.3f} {str(top1):>6} {kept:>9}/10 {lowest:12.3f}"
              f"  {'PASS' if passed else 'FAIL'}")
    if args.out:
        res.grid().save(args.out / "classes_grid.png")
    print(f"\noverall: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
