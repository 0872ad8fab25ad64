"""The audit's causal check: does covering a cluster's hot region change its predictions
more than covering a region of the same size that is not hot?

Lapuschkin et al. (2019) removed the watermark and watched the prediction; we do the same
for any cluster, with controls strong enough to tell "this region matters" from "covering
anything that large matters" (an earlier version covered where the mean map reached half
its maximum: 49-58% of the image on a 7x7 CAM, and a random region that large flipped
nearly as often).

Regions (:func:`cluster_regions`), at the input's resolution: the cluster's mean map is
upsampled bilinearly and, for each size in :data:`SIZES` (1/16, 1/8 and 1/4 of the image,
never more than a quarter), the *hot* region is that many of its hottest pixels (fewer when
fewer have any relevance: a pixel without relevance is never called hot), i.e. the region of
that area holding the most relevance, reported with the share of the mean map's relevance
it holds. Two controls of exactly the same area:

* ``random``: the hot region's own shape circularly shifted by an offset drawn per member
  from a ``torch.Generator`` seeded by the member's stable key (its record key in an audit)
  and the check's seed, so results do not depend on batching or on the engine;
* ``cold``: the cluster's least relevant pixels (ties in reverse raster order, so the hot
  and cold regions never overlap).

Infills (:data:`INFILLS`): ``blur`` replaces the covered pixels by a heavy Gaussian blur
(sigma = 1/8 of the image side) of the image's *surroundings* (normalised convolution: the
covered pixels themselves do not leak into their fill), which stays close to the image's own
colours and textures; ``mean`` is the image's per-channel mean (the former infill: a flat
grey patch is itself out of distribution). Both are reported; the verdict uses ``blur``.

Statistics (:class:`CausalRow`): every flip rate has a Wilson 95% interval, and the hot
region is compared with each control on the same images by an exact one-sided sign test
(McNemar) on the discordant pairs. The rule (:data:`RULE`): the region *matters* when, at
one of the sizes with the ``blur`` infill, the hot rate's interval lies entirely above both
controls' intervals *and* both paired tests give p < 0.05 / (number of sizes). The headline
(``flip_rate``, ``random_flip_rate``, ``region_fraction``) is the smallest size where that
holds, else the smallest size tried, and the sentence then says "not shown to matter"
instead of quoting two rates as if they differed.

The forwards run through an engine (:mod:`convlens.engines`): a picklable
:class:`~convlens.engines.WorkerFactory` over :func:`causal_batch`, like the pass's, so on
Ray the covering forwards run in the actors. See docs/architecture.md, "Audit": forwards
only (no autograd), in eval mode, the model left as found.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens._hooks import evaluation_mode
from convlens.engines import WorkerFactory
from convlens.errors import ConvlensError
from convlens.models.classifier import Classifier, ModelLike

SIZES = (1 / 16, 1 / 8, 1 / 4)
"""Fractions of the image covered, smallest first; none may exceed a quarter."""
MAX_SIZE = 0.25
INFILLS = ("blur", "mean")
VERDICT_INFILL = "blur"
KINDS = ("hot", "random", "cold")
Z95 = 1.959963984540054
ALPHA = 0.05
RULE = ("matters when, at some size with the blur infill, the hot region's Wilson 95% interval "
        "lies above both controls' intervals and both paired sign tests give "
        "p < 0.05 / (sizes tried); headline: the smallest such size, else the smallest tried")


# ----------------------------------------------------------------------------- regions


@dataclass
class Regions:
    """The cluster's regions at input resolution, one per size.

    Attributes:
        sizes: The fractions asked for (:data:`SIZES`).
        hot: bool ``(S, H, W)``: the hottest pixels, ``round(size * H * W)`` of them, or
            only those with relevance when there are fewer.
        cold: bool ``(S, H, W)``: as many of the least relevant pixels.
        shares: Share of the upsampled mean map's relevance inside each hot region.
    """

    sizes: tuple[float, ...]
    hot: torch.Tensor
    cold: torch.Tensor
    shares: tuple[float, ...]

    @property
    def areas(self) -> tuple[float, ...]:
        """The fraction of the image each hot region really covers (whole pixels)."""
        pixels = self.hot[0].numel()
        return tuple(float(m.sum()) / pixels for m in self.hot)


def upsample_heat(heat: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """The mean map bilinearly upsampled to the input, negatives clipped: float64 ``(H, W)``."""
    tensor = torch.as_tensor(np.asarray(heat, dtype=np.float64))[None, None]
    up = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0]
    return up.clamp_min(0.0)


def cluster_regions(heat: np.ndarray, size: tuple[int, int],
                    sizes: Sequence[float] = SIZES) -> Regions:
    """Hot and cold regions of ``heat`` (the cluster's mean map) at input size ``size``.

    Args:
        heat: The mean map ``(h, w)`` (e.g. 32x32 from the stored maps), non-negative.
        size: The input's ``(H, W)``.
        sizes: Fractions of the image, each in (0, 1/4].

    Example:
        >>> heat = np.full((8, 8), 0.01); heat[0, 0] = 1.0
        >>> r = cluster_regions(heat, (32, 32))
        >>> r.areas, bool(r.hot[0, 0, 0]), bool(r.cold[0, 0, 0])
        ((0.0625, 0.125, 0.25), True, False)
        >>> [round(s, 2) for s in r.shares]  # the relevance each region holds
        [0.63, 0.66, 0.71]
        >>> heat[:] = 0; heat[0, 0] = 1.0    # all relevance within 3.5% of the image
        >>> cluster_regions(heat, (32, 32)).areas
        (0.03515625, 0.03515625, 0.03515625)
    """
    sizes = tuple(float(s) for s in sizes)
    if not sizes or any(not 0 < s <= MAX_SIZE for s in sizes):
        raise ConvlensError(f"causal check sizes must be fractions of the image in (0, "
                            f"{MAX_SIZE}], got {list(sizes)}; pass e.g. (1/16, 1/8, 1/4)")
    height, width = size
    up = upsample_heat(heat, (height, width)).reshape(-1)
    pixels = up.numel()
    total = float(up.sum())
    positive = int((up > 0).sum())
    # a stable sort: ties (flat zeros, mostly) fall in raster order, the same on every
    # machine; the cold region reads the same order backwards, so even among ties the two
    # never share a pixel (each is at most a quarter of the image)
    hottest = torch.from_numpy(np.argsort(-up.numpy(), kind="stable"))
    coldest = hottest.flip(0)
    hot, cold, shares = [], [], []
    for fraction in sizes:
        # only relevant pixels: a map whose mass fits in less keeps a smaller region
        count = min(int(round(fraction * pixels)), positive)
        mask = torch.zeros(pixels, dtype=torch.bool)
        mask[hottest[:count]] = True
        hot.append(mask.view(height, width))
        shares.append(min(1.0, float(up[hottest[:count]].sum()) / total) if total > 0
                      else fraction)
        mask = torch.zeros(pixels, dtype=torch.bool)
        mask[coldest[:count]] = True
        cold.append(mask.view(height, width))
    return Regions(sizes, torch.stack(hot), torch.stack(cold), tuple(shares))


def member_seed(key: str, seed: int) -> int:
    """A stable 63-bit seed for one member from its key and the check's seed."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


def _offsets(seed: int, count: int, height: int, width: int) -> list[tuple[int, int]]:
    """``count`` circular offsets drawn from a generator seeded by ``seed`` (one per size)."""
    generator = torch.Generator().manual_seed(seed)
    return [(int(torch.randint(0, height, (1,), generator=generator)),
             int(torch.randint(0, width, (1,), generator=generator))) for _ in range(count)]


# ----------------------------------------------------------------------------- covering


def _gaussian(sigma: float, radius: int, dtype: torch.dtype, device: torch.device
              ) -> torch.Tensor:
    steps = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (steps / sigma) ** 2)
    return kernel / kernel.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A heavy Gaussian blur of ``(N, C, H, W)``, computed on a grid ``sigma / 2`` times
    coarser (area pooling, a separable Gaussian with zero padding, bilinear growth back).

    Every step is linear with non-negative weights, so normalised convolution
    (``blur(x * keep) / blur(keep)``) still gives a weighted mean of the kept pixels. The
    coarse grid is what makes it cheap: a sigma of 28 px at 224 px is a 169-tap kernel at
    full size (a quarter of the check's time on ResNet-18, CPU), 13 taps on a 16x16 grid.
    """
    n, c, height, width = x.shape
    step = max(1, int(sigma // 2))
    small = F.avg_pool2d(x, step, ceil_mode=True) if step > 1 else x
    sigma = sigma / step
    rows, cols = small.shape[-2:]
    radius = max(1, min(int(math.ceil(3 * sigma)), max(rows, cols) - 1))
    kernel = _gaussian(sigma, radius, x.dtype, x.device)
    flat = small.reshape(n * c, 1, rows, cols)
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1), padding=(0, radius))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    flat = flat.view(n, c, rows, cols)
    if step > 1:
        flat = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)
    return flat


def cover(x: torch.Tensor, masks: torch.Tensor, infill: str) -> torch.Tensor:
    """``x`` with ``masks`` (bool ``(N, H, W)``) covered by ``infill`` (see :data:`INFILLS`).

    ``blur``: a Gaussian blur (sigma = 1/8 of the longer side, see :func:`_blur`) of the
    uncovered pixels only, normalised by the blurred weight of those pixels, so the fill
    continues the surroundings and holds nothing of what it covers; where no uncovered pixel
    is near, the image's per-channel mean. ``mean``: the per-channel mean of the whole image.
    """
    m = masks[:, None].to(torch.float32)
    work = x.to(torch.float32)
    mean = work.mean(dim=(2, 3), keepdim=True)
    if infill == "mean":
        fill = mean.expand_as(work)
    elif infill == "blur":
        sigma = max(x.shape[-2:]) / 8
        keep = 1 - m
        weight = _blur(keep, sigma)
        blurred = _blur(work * keep, sigma)
        fill = torch.where(weight > 1e-4, blurred / weight.clamp_min(1e-4), mean)
    else:
        raise ConvlensError(f"unknown infill {infill!r}; accepted: {', '.join(INFILLS)}")
    return (work * (1 - m) + fill * m).to(x.dtype)


@torch.no_grad()
def _predict(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with evaluation_mode(module):
        return module(x).argmax(dim=1)


def covered_flips(module: nn.Module, x: torch.Tensor, before: torch.Tensor, regions: Regions,
                  seeds: Sequence[int], infills: Sequence[str] = INFILLS) -> np.ndarray:
    """Which predictions change under each cover: bool ``(N, sizes, infills, KINDS)``.

    Args:
        module: Returns logits; run in eval mode without autograd, left as found.
        x: ``(N, C, H, W)`` on the module's device.
        before: ``(N,)`` the predictions to compare with.
        regions: From :func:`cluster_regions` at ``x``'s size.
        seeds: One per image (:func:`member_seed`): draws the random control's offsets.
    """
    n, (height, width) = len(x), tuple(regions.hot.shape[1:])
    if tuple(x.shape[2:]) != (height, width):
        raise ConvlensError(f"causal check: images are {tuple(x.shape[2:])} but the regions "
                            f"are {(height, width)}; compute the regions at the input size")
    offsets = [_offsets(int(s), len(regions.sizes), height, width) for s in seeds]
    before = torch.as_tensor(before).to(x.device)
    out = np.zeros((n, len(regions.sizes), len(infills), len(KINDS)), dtype=bool)
    for s, (hot, cold) in enumerate(zip(regions.hot, regions.cold)):
        shifted = torch.stack([torch.roll(hot, offsets[k][s], dims=(0, 1)) for k in range(n)])
        masks = {"hot": hot.expand(n, height, width), "random": shifted,
                 "cold": cold.expand(n, height, width)}
        for i, infill in enumerate(infills):
            for j, kind in enumerate(KINDS):
                covered = cover(x, masks[kind].to(x.device), infill)
                out[:, s, i, j] = (_predict(module, covered) != before).cpu().numpy()
    return out


# ----------------------------------------------------------------------------- statistics


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (95% by default); ``(0, 1)`` for no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test(wins: int, losses: int) -> float:
    """Exact one-sided sign test (McNemar on discordant pairs): P(X >= wins), X ~ Bin(n, 1/2)."""
    n = wins + losses
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n)


def _r(value: float) -> float:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else 0.0


@dataclass(frozen=True)
class CausalRow:
    """One (size, infill) cell of the check: flip counts of the hot region and both controls,
    and the discordant pairs the paired tests use."""

    size: float
    area: float
    infill: str
    share: float
    members: int
    hot: int
    random: int
    cold: int
    hot_not_random: int
    random_not_hot: int
    hot_not_cold: int
    cold_not_hot: int

    def rate(self, kind: str) -> float:
        return getattr(self, kind) / self.members if self.members else 0.0

    def interval(self, kind: str) -> tuple[float, float]:
        return wilson(getattr(self, kind), self.members)

    @property
    def p_random(self) -> float:
        return sign_test(self.hot_not_random, self.random_not_hot)

    @property
    def p_cold(self) -> float:
        return sign_test(self.hot_not_cold, self.cold_not_hot)

    def shown(self, tests: int) -> bool:
        """The hot interval lies above both controls' and both paired tests pass
        (significance ``ALPHA / tests``)."""
        low = self.interval("hot")[0]
        return (low > self.interval("random")[1] and low > self.interval("cold")[1]
                and self.p_random < ALPHA / tests and self.p_cold < ALPHA / tests)

    def to_dict(self) -> dict[str, Any]:
        kinds = {}
        for kind in KINDS:
            low, high = self.interval(kind)
            kinds[kind] = {"flips": getattr(self, kind), "rate": _r(self.rate(kind)),
                           "ci": [_r(low), _r(high)]}
        return {"size": _r(self.size), "area": _r(self.area), "infill": self.infill,
                "relevance_share": _r(self.share), "members": self.members, **kinds,
                "discordant": {"random": [self.hot_not_random, self.random_not_hot],
                               "cold": [self.hot_not_cold, self.cold_not_hot]},
                "p_random": _r(self.p_random), "p_cold": _r(self.p_cold)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CausalRow:
        return cls(data["size"], data["area"], data["infill"], data["relevance_share"],
                   data["members"], data["hot"]["flips"], data["random"]["flips"],
                   data["cold"]["flips"], *data["discordant"]["random"],
                   *data["discordant"]["cold"])


@dataclass
class CausalResult:
    """The causal check of one cluster.

    Attributes:
        flip_rate: Hot region, headline size, ``blur`` infill.
        random_flip_rate: The same shape at random positions, same size and infill.
        members: Images checked.
        region_fraction: The headline size's area (fraction of the image).
        table: Every (size, infill) row, sizes ascending.
        verdict: ``"matters"`` or ``"not shown"`` (see :data:`RULE`).
        cold_flip_rate: The coldest pixels of the same area, headline size.
    """

    flip_rate: float
    random_flip_rate: float
    members: int
    region_fraction: float
    table: list[CausalRow] = field(default_factory=list)
    verdict: str = "not shown"
    cold_flip_rate: float = 0.0
    mistakes: int = 0
    restored: int = 0

    @property
    def restore_rate(self) -> float | None:
        """Of the checked mistakes, the share whose prediction becomes their labelled class
        when the hot region is covered (headline size, ``blur``); None without mistakes."""
        return self.restored / self.mistakes if self.mistakes else None

    def restores(self) -> bool:
        """Covering the region gives most of its mistakes their labelled class back, clearly:
        the Wilson interval of the restore rate lies above one half."""
        return self.mistakes > 0 and wilson(self.restored, self.mistakes)[0] > 0.5

    @property
    def headline(self) -> CausalRow | None:
        for row in self.table:
            if row.infill == VERDICT_INFILL and row.area == self.region_fraction:
                return row
        return None

    def sentence(self) -> str:
        """The result in words, intervals included."""
        row = self.headline
        if row is None:
            return f"no causal check ({self.members} members could be read)"

        def rate(kind: str) -> str:
            low, high = row.interval(kind)
            return f"{row.rate(kind):.0%} [{low:.0%}-{high:.0%}]"

        where = (f"its hottest {row.area:.1%} of the image (holding {row.share:.0%} of the "
                 "cluster's relevance, filled with a blur of its surroundings)")
        figures = (f"{rate('hot')} of these {self.members} predictions; a random region of the "
                   f"same shape, {rate('random')}; its coldest {row.area:.1%}, {rate('cold')}")
        if self.mistakes:
            low, high = wilson(self.restored, self.mistakes)
            figures += (f"; {self.restored} of the {self.mistakes} mistakes among them "
                        f"({self.restored / self.mistakes:.0%} [{low:.0%}-{high:.0%}]) get "
                        "their labelled class back")
        if self.verdict == "matters":
            return f"the region matters: covering {where} changes {figures} (95% intervals)"
        tried = ", ".join(dict.fromkeys(f"{r.area:.1%}" for r in self.table
                                        if r.infill == VERDICT_INFILL))
        return (f"not shown to matter: at no size tried ({tried} of the image) did covering its "
                f"hottest pixels change clearly more predictions than a random region of the "
                f"same shape or its coldest pixels; at {row.area:.1%}: {figures} "
                "(95% intervals)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (finite floats, 6 digits); :meth:`from_dict` reads it back."""
        return {"flip_rate": _r(self.flip_rate), "random_flip_rate": _r(self.random_flip_rate),
                "cold_flip_rate": _r(self.cold_flip_rate), "members": self.members,
                "region_fraction": _r(self.region_fraction), "infill": VERDICT_INFILL,
                "verdict": self.verdict, "rule": RULE, "sentence": self.sentence(),
                "mistakes": self.mistakes, "restored": self.restored,
                "table": [row.to_dict() for row in self.table]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CausalResult:
        return cls(data["flip_rate"], data["random_flip_rate"], data["members"],
                   data["region_fraction"], [CausalRow.from_dict(r) for r in data["table"]],
                   data["verdict"], data["cold_flip_rate"], data.get("mistakes", 0),
                   data.get("restored", 0))


def summarise(flips: np.ndarray, regions: Regions, infills: Sequence[str] = INFILLS
              ) -> CausalResult:
    """Counts, intervals, tests and the verdict from :func:`covered_flips`' array."""
    flips = np.asarray(flips, dtype=bool).reshape(-1, len(regions.sizes), len(infills),
                                                  len(KINDS))
    members = len(flips)
    hot_k, random_k, cold_k = (KINDS.index(k) for k in ("hot", "random", "cold"))
    table = []
    for s, (size, area, share) in enumerate(zip(regions.sizes, regions.areas, regions.shares)):
        for i, infill in enumerate(infills):
            hot, rnd, cold = flips[:, s, i, hot_k], flips[:, s, i, random_k], flips[:, s, i, cold_k]
            table.append(CausalRow(size, area, infill, share, members, int(hot.sum()),
                                   int(rnd.sum()), int(cold.sum()), int((hot & ~rnd).sum()),
                                   int((rnd & ~hot).sum()), int((hot & ~cold).sum()),
                                   int((cold & ~hot).sum())))
    return _decide(table, members)


def _decide(table: list[CausalRow], members: int) -> CausalResult:
    rows = [r for r in table if r.infill == VERDICT_INFILL]
    if not rows:
        return CausalResult(0.0, 0.0, members, 0.0, table)
    shown = [r for r in rows if r.shown(len(rows))]
    headline = shown[0] if shown else rows[0]
    return CausalResult(headline.rate("hot"), headline.rate("random"), members, headline.area,
                        table, "matters" if shown else "not shown", headline.rate("cold"))


# ----------------------------------------------------------------------------- engine


def causal_batch(model: Classifier, batch: Any, *, regions: Regions, predicted: list[int],
                 seeds: list[int], infills: tuple[str, ...] = INFILLS,
                 labels: list[int] | None = None) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The check's per-batch work on an engine (:class:`convlens.engines.WorkerFactory`):
    a decoded batch in; its entry indices, flips ``(n, sizes, infills, KINDS)`` and
    :func:`restored_labels` out.

    Args:
        model: A Classifier (moved to the worker's device by the factory) or an
            ``nn.Module``.
        batch: A decoded batch of the entries given to the engine.
        regions: From :func:`cluster_regions` at the input size.
        predicted: Per entry given to the engine, the prediction to compare with.
        seeds: Per entry, its :func:`member_seed`.
        infills: See :data:`INFILLS`.
        labels: Per entry the labelled class of a mistake, else -1 (None: no mistakes).
    """
    module = _module(model)
    index = [item.index for item in batch.items]
    before = torch.tensor([predicted[i] for i in index], dtype=torch.long)
    x = batch.x.to(_device(module))
    flips = covered_flips(module, x, before, regions, [seeds[i] for i in index], infills)
    wanted = [labels[i] if labels else -1 for i in index]
    return index, flips, restored_labels(module, x, wanted, regions)


def restored_labels(module: nn.Module, x: torch.Tensor, labels: Sequence[int],
                    regions: Regions) -> np.ndarray:
    """Per image and size: 1 when covering the hot region (``blur``) makes the prediction
    its labelled class, 0 when not, -1 for images that are not mistakes (label -1): int8
    ``(N, sizes)``. Only the mistakes are run."""
    out = np.full((len(x), len(regions.sizes)), -1, dtype=np.int8)
    wrong = [k for k, label in enumerate(labels) if label >= 0]
    if not wrong:
        return out
    target = torch.tensor([labels[k] for k in wrong], device=x.device)
    for s, hot in enumerate(regions.hot):
        covered = cover(x[wrong], hot.expand(len(wrong), *hot.shape).to(x.device),
                        VERDICT_INFILL)
        out[wrong, s] = (_predict(module, covered) == target).cpu().numpy()
    return out


def _module(model: ModelLike) -> nn.Module:
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise ConvlensError(f"the causal check needs an nn.Module or a Classifier, got "
                            f"{type(model).__name__}")
    return module


def _device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def run_check(engine: Any, classifier: Classifier, entries: Sequence[Any], keys: Sequence[str],
              predicted: Sequence[int], heat: np.ndarray, *, seed: int, batch_size: int,
              sizes: Sequence[float] = SIZES, labels: Sequence[int] | None = None
              ) -> CausalResult:
    """The check of one cluster through ``engine`` (:mod:`convlens.engines`).

    Args:
        engine: The engine the audit's pass used (local, Ray, or an engine object).
        classifier: Its preprocessing decodes the entries; its model runs the forwards.
        entries: The members' dataset entries; ``keys``, ``predicted``: per entry, its
            stable key (seeds the random control) and the prediction to compare with.
        heat: The cluster's mean map.
        seed: The check's seed. ``batch_size``: entries per unit.
        labels: Per entry, the labelled class index of a mistake, else -1: the result
            then says how many mistakes covering the region gives their class back.

    Members that can no longer be decoded are left out (``members`` counts the others).
    """
    height, width = classifier.preprocessing.input_size
    regions = cluster_regions(heat, (height, width), sizes)
    factory = WorkerFactory(causal_batch, classifier, regions=regions,
                            predicted=[int(p) for p in predicted],
                            seeds=[member_seed(k, seed) for k in keys],
                            labels=None if labels is None else [int(v) for v in labels])
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for done in engine.map_units(list(entries), classifier.preprocessing, factory,
                                 batch_size=batch_size):
        if done.result is not None:
            index, flips, restored = done.result
            found.update(zip(index, zip(flips, restored)))
    rows = [found[i][0] for i in sorted(found)]
    shape = (0, len(regions.sizes), len(INFILLS), len(KINDS))
    result = summarise(np.stack(rows) if rows else np.zeros(shape, bool), regions)
    back = np.array([found[i][1] for i in sorted(found)]).reshape(-1, len(regions.sizes))
    headline = [k for k, area in enumerate(regions.areas) if area == result.region_fraction]
    if len(back) and headline:
        column = back[:, headline[0]]
        result.mistakes, result.restored = int((column >= 0).sum()), int((column == 1).sum())
    return result


def causal_check(model: ModelLike, x: torch.Tensor, heat: np.ndarray,
                 predicted: Sequence[int] | torch.Tensor | None = None, *,
                 keys: Sequence[str] | None = None, seed: int = 0, batch_size: int = 64,
                 sizes: Sequence[float] = SIZES) -> CausalResult:
    """The check on tensors in memory (the audit uses :func:`run_check` through an engine).

    Args:
        model: An ``nn.Module`` returning logits, or a Classifier.
        x: Preprocessed members ``(N, C, H, W)``.
        heat: The cluster's mean map (any size; upsampled to ``x``'s).
        predicted: The predictions to compare with; default: the model's on ``x``.
        keys: Stable per-member keys for the random control; default ``"0"``, ``"1"``, ...
        seed: The check's seed. ``batch_size``: images per forward.

    Example:
        >>> result = causal_check(model, x, heat)                      # doctest: +SKIP
        >>> result.verdict, result.to_dict()["table"][0]["hot"]["ci"]  # doctest: +SKIP
    """
    module = _module(model)
    if x.dim() != 4:
        raise ConvlensError(f"causal_check needs x (N, C, H, W), got {tuple(x.shape)}")
    regions = cluster_regions(heat, tuple(x.shape[2:]), sizes)
    keys = [str(k) for k in range(len(x))] if keys is None else list(keys)
    seeds = [member_seed(k, seed) for k in keys]
    device = _device(module)
    rows = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size].to(device)
        if predicted is None:
            before = _predict(module, batch)
        else:
            before = torch.as_tensor(predicted[start:start + batch_size])
        rows.append(covered_flips(module, batch, before, regions,
                                  seeds[start:start + batch_size]))
    shape = (0, len(regions.sizes), len(INFILLS), len(KINDS))
    return summarise(np.concatenate(rows) if rows else np.zeros(shape, bool), regions)
