"""Speed of every registered attribution method: ratio to its floor and to peer libraries.

Registry-driven: every method in ``convlens.methods()`` is timed on the bundled
EfficientNet-Lite0 (or, with ``--model resnet18``, torchvision's ResNet-18 with random
weights) at each batch size, next to

* its **floor** (docs/architecture.md, "Performance principles"), measured in the same rounds:
  ``pixel`` = one forward + ``torch.autograd.grad(score.sum(), x)`` with x the only input
  (no weight gradients); ``layer`` = one forward + a backward from the output down to the
  layer only (the layer's output is detached into a leaf in a forward hook);
  ``forward`` = one forward under ``torch.no_grad``. An n-pass method's floor is
  ``n x`` the single-pass floor at the same batch (``steps=50`` -> 50 floors); a
  perturbation method's is the number of gradient-free forwards its definition needs.
  n-pass methods also get a **work-equivalent floor** (``bfloor``): the same passes at the
  method's own chunk sizes (``batch_size``), with nothing else, which isolates the
  implementation's overhead from the batch-size effect of chunking;
* the **peer** implementations of the same method at the same settings and targets
  (Captum, pytorch-grad-cam, Zennit), timed end to end as their users call them.

Ours are called with ``target=None`` (the arg-max, resolved inside the call); peers get the
same targets explicitly. Each peer runs on its own deep copy of the model (pytorch-grad-cam
keeps hooks registered for the life of its object; Captum's DeepLift sets attributes).

Usage (CPU; allocator settings as in ``make bench``)::

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \\
        .venv/bin/python benchmarks/bench_attribution.py
    ... --methods saliency,gradcam --batch-sizes 1 --rounds 3
    ... --quick                      # smoke run, tiny settings (about a minute)
    ... --gpu-script                 # CUDA, batch 1 and 64, JSON to $OUT when set
    ... --model resnet18 --methods gradcam,integrated_gradients,saliency   # batch 1, 4, 16

The ``ours - floor`` column is the per-call overhead: the median over rounds of the call's
time minus its floor's in the same round.

Methods registered later are picked up automatically; settings for unknown methods are
inferred from their family and options (marked ``floor?`` in the table).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars

import torch  # noqa: E402
from _timing import (  # noqa: E402
    Timed,
    format_facts,
    machine_facts,
    paired_difference,
    paired_ratio,
    peak_rss_growth,
    run_groups,
)

import convlens  # noqa: E402

GRADIENT_CAMS = ("gradcam", "hirescam", "xgradcam", "layercam", "gradcam_plus_plus")
MULTI = "gradient_cams"
RESULTS = HERE / "results"

# Per-method settings, per profile and batch class ("1": batch <= 4, "N": larger). The CPU
# settings keep the whole run under ~10 minutes on 2 cores; n-pass targets are ratios, so a
# smaller n measures the same thing. None = skipped at that batch (reason printed).
_SCORE = {"quick": {"layer": "blocks.0"}, "cpu1": {"layer": "blocks.2"}, "cpuN": None,
          "gpu1": {}, "gpuN": {"layer": "blocks.15"}}
_NOISE = {"quick": {"samples": 2}, "cpu1": {"samples": 16}, "cpuN": None,
          "gpu1": {"samples": 50}, "gpuN": {"samples": 16}}
SETTINGS: dict[str, dict[str, dict[str, Any] | None]] = {
    "integrated_gradients": {"quick": {"steps": 4}, "cpu1": {"steps": 50},
                             "cpuN": {"steps": 4}, "gpu1": {"steps": 50},
                             "gpuN": {"steps": 50}},
    "smoothgrad": _NOISE,
    "vargrad": _NOISE,
    "gradient_shap": {**_NOISE, "gpuN": {"samples": 4}},
    "occlusion": {"quick": {"window": 112, "stride": 112},
                  "cpu1": {"window": 56, "stride": 28}, "cpuN": None,
                  "gpu1": {}, "gpuN": {"window": 32, "stride": 16}},
    "rise": {"quick": {"masks": 4}, "cpu1": {"masks": 64}, "cpuN": None, "gpu1": {},
             "gpuN": {"masks": 250}},
    "scorecam": _SCORE,
    "ablationcam": _SCORE,
}
SKIP_REASON = ("n-pass method skipped at this batch to keep the CPU run near 10 minutes; its "
               "ratios are measured at batch 1 here and at batch 64 by --gpu-script "
               "(edit SETTINGS to time it)")
# Methods the issue sets targets for: they (and their peers) get the most rounds.
KEY = {"saliency", "input_x_gradient", "gradcam", "layercam", "eigencam", "integrated_gradients",
       "lrp", "lrp_epsilon", "gradient_cams"}


@dataclass
class Profile:
    name: str                   # quick | cpu | gpu
    batch_sizes: list[int]
    rounds_fast: dict[str, int]  # batch class -> rounds for floors and single-pass KEY methods
    rounds_slow: dict[str, int]  # batch class -> rounds for n-pass runners
    rounds_other: dict[str, int]  # batch class -> rounds for other single-pass methods

    def key(self, batch: int) -> str:
        return "quick" if self.name == "quick" else f"{self.name}{'1' if batch <= 4 else 'N'}"

    def bclass(self, batch: int) -> str:
        return "1" if batch <= 4 else "N"


PROFILES = {
    "cpu": Profile("cpu", [1, 16], {"1": 7, "N": 5}, {"1": 3, "N": 3}, {"1": 5, "N": 2}),
    "quick": Profile("quick", [1, 2], {"1": 2, "N": 2}, {"1": 1, "N": 1}, {"1": 1, "N": 1}),
    "gpu": Profile("gpu", [1, 64], {"1": 9, "N": 7}, {"1": 3, "N": 3}, {"1": 9, "N": 7}),
}


# ---- the plan for one method at one batch size --------------------------------------------------

@dataclass
class Plan:
    """How one method is timed at one batch size.

    Attributes:
        floor: ``pixel``, ``layer`` or ``forward`` (see the module docstring).
        passes: The floor multiplier (n for n-pass methods).
        batched: Work-equivalent floor as (kind, batch) passes, for n-pass methods.
        guessed: The floor was inferred from family/options (an unknown method).
    """

    method: str
    batch: int
    options: dict[str, Any]
    layer: str | None
    floor: str
    passes: int
    batched: tuple[tuple[str, int], ...] | None = None
    slow: bool = False
    guessed: bool = False
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.options.items()]
        if self.layer:
            parts.append(f"layer={self.layer}")
        return ", ".join(parts)


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def _windows(size: int, window: int, stride: int) -> int:
    return math.ceil((size - window) / stride) + 1


def make_plan(spec: convlens.Method, batch: int, profile: Profile, channels: Callable[[str], int],
              side: int = 224) -> Plan | str:
    """The plan, or a string saying why the method is skipped at this batch."""
    name = spec.name
    table = SETTINGS.get(name)
    chosen = table.get(profile.key(batch), {}) if table else {}
    if table is not None and chosen is None:
        return SKIP_REASON
    chosen = dict(chosen)
    layer = chosen.pop("layer", None)
    options = {k: v for k, v in chosen.items() if k in spec.options}
    merged = {**spec.options, **options}
    bs = merged.get("batch_size", 64)
    plan = Plan(name, batch, options, layer, "pixel", 1)
    if name in ("integrated_gradients", "smoothgrad", "vargrad", "gradient_shap"):
        n = merged["steps"] if name == "integrated_gradients" else merged["samples"]
        plan.passes, plan.slow = n, True
        plan.batched = tuple(("pixel", c) for c in _chunks(batch * n, bs))
    elif name == "occlusion":
        window, stride = merged["window"], merged["stride"]
        window = window if isinstance(window, int) else window[0]
        stride = stride if isinstance(stride, int) else stride[0]
        n = _windows(side, window, stride) ** 2
        plan.floor, plan.passes, plan.slow = "forward", n + 1, True
        plan.batched = (("forward", batch),) + tuple(("forward", c)
                                                     for c in _chunks(batch * n, bs))
        plan.notes.append(f"{n} windows + the clean pass")
    elif name == "rise":
        n = merged["masks"]
        plan.floor, plan.passes, plan.slow = "forward", n, True
        plan.batched = tuple(("forward", c) for c in _chunks(batch * n, bs))
    elif name in ("scorecam", "ablationcam"):
        k = channels(layer or default_layer())
        plan.floor, plan.passes, plan.slow = "forward", k + 1, True
        plan.batched = (("forward", batch),) + tuple(("forward", c)
                                                     for c in _chunks(batch * k, bs))
        plan.notes.append(f"{k} channels x full forward + 1 (ours skips dead channels"
                          + ("; only the part above the layer runs per ablation)"
                             if name == "ablationcam" else ")"))
    elif spec.family == "cam" and spec.combine is not None:
        plan.floor = "layer"
    elif name in ("eigencam", "cam"):
        plan.floor = "forward"
    elif name in ("saliency", "input_x_gradient", "guided_backprop", "deconvnet",
                  "guided_gradcam", "deeplift") or spec.family == "relevance":
        plan.floor = "pixel"
        if name == "deeplift":
            plan.notes.append("+1 gradient-free batch-1 forward on the baseline")
        if name == "guided_gradcam":
            plan.notes.append("+ the top part of a second backward (Grad-CAM)")
    else:  # a method registered after this script was written: infer from family / options
        plan.guessed = True
        count = next((merged[k] for k in ("steps", "samples", "masks") if k in merged), None)
        if spec.family == "perturbation" or (spec.family == "cam" and spec.space == "layer"):
            plan.floor = "forward"
        if isinstance(count, int):
            plan.passes, plan.slow = count, True
            plan.batched = tuple((plan.floor, c) for c in _chunks(batch * count, bs))
        elif "batch_size" in merged:
            plan.slow = True
            plan.notes.append("n-pass method with an unknown pass count: floor = 1 pass")
    return plan


#: The models the benchmark runs on: name -> (torchvision name or None for the bundled
#: model, default CAM layer, description).
MODELS = {
    "bundled": (None, "head", "the bundled EfficientNet-Lite0 (pretrained weights)"),
    "resnet18": ("resnet18", "layer4",
                 "torchvision's ResNet-18, random weights (weights=None: no download), its "
                 "own preprocessing"),
}
_MODEL = {"name": "bundled"}
# ResNet-18 rows (issue "convlens 4"): gradcam at batch 16, integrated gradients at batch
# 4 x 32 steps, and batch 1.
RESNET18_BATCHES = [1, 4, 16]
RESNET18_SETTINGS = {"integrated_gradients": {"steps": 32}}


def default_layer() -> str:
    return MODELS[_MODEL["name"]][1]


# ---- inputs, floors and runners -----------------------------------------------------------------

class Context:
    """The model, inputs and targets at one batch size, plus cached tensors for floors."""

    def __init__(self, clf: Any, device: torch.device, batch: int, images: torch.Tensor):
        self.clf, self.device, self.batch = clf, device, batch
        self.module = clf.module
        reps = math.ceil(batch / images.shape[0])
        self.x = images.repeat(reps, 1, 1, 1)[:batch].contiguous().to(device)
        with torch.no_grad():
            self.targets = self.module(self.x).argmax(1)
        self._chunk: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._copies: dict[str, torch.nn.Module] = {}

    def chunk(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` images (the batch repeated) and their targets, for work-equivalent floors."""
        if size not in self._chunk:
            reps = math.ceil(size / self.batch)
            self._chunk[size] = (self.x.repeat(reps, 1, 1, 1)[:size].contiguous(),
                                 self.targets.repeat(reps)[:size].contiguous())
        return self._chunk[size]

    def copy(self, key: str) -> torch.nn.Module:
        """A deep copy of the model owned by one peer library (``key``)."""
        if key not in self._copies:
            self._copies[key] = copy.deepcopy(self.module).eval()
        return self._copies[key]

    def layer_module(self, module: torch.nn.Module, layer: str | None) -> torch.nn.Module:
        return dict(module.named_modules())[layer or default_layer()]


def pixel_pass(module: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    logits = module(x)
    (grad,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), x)
    return grad


def layer_pass(module: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor,
               targets: torch.Tensor) -> torch.Tensor:
    leaves: list[torch.Tensor] = []

    def cut(_m: torch.nn.Module, _i: Any, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    handle = layer.register_forward_hook(cut)
    try:
        logits = module(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), leaves[-1])
    return grad


def forward_pass(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def floor_fn(ctx: Context, kind: str, size: int, layer: str | None = None) -> Callable[[], Any]:
    x, targets = ctx.chunk(size)
    if kind == "pixel":
        return lambda: pixel_pass(ctx.module, x, targets)
    if kind == "layer":
        module = ctx.layer_module(ctx.module, layer)
        return lambda: layer_pass(ctx.module, module, x, targets)
    return lambda: forward_pass(ctx.module, x)


def batched_floor_fn(ctx: Context, passes: tuple[tuple[str, int], ...]) -> Callable[[], Any]:
    fns = [floor_fn(ctx, kind, size) for kind, size in passes]

    def run() -> None:
        for fn in fns:
            fn()

    return run


def ours_fn(ctx: Context, plan: Plan) -> Callable[[], Any]:
    method: Any = list(plan.options["methods"]) if plan.method == MULTI else plan.method
    options = {} if plan.method == MULTI else plan.options
    return lambda: convlens.attribute(ctx.module, ctx.x, method, layer=plan.layer, **options)


# ---- peers --------------------------------------------------------------------------------------

PeerFactory = Callable[[], Callable[[], Any]]


def _pgc(ctx: Context, plan: Plan, cls_name: str, **kwargs: Any) -> PeerFactory:
    def build() -> Callable[[], Any]:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        model = copy.deepcopy(ctx.module).eval()  # its hooks live as long as the object
        layer = ctx.layer_module(model, plan.layer)
        cam = getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[layer], **kwargs)
        if cls_name == "ScoreCAM":
            cam.batch_size = plan.options.get("batch_size", 64)
        targets = [ClassifierOutputTarget(int(t)) for t in ctx.targets]
        return lambda: cam(input_tensor=ctx.x, targets=targets)

    return build


def _captum(ctx: Context, make: Callable[[Any, torch.nn.Module], Callable[[], Any]]
            ) -> PeerFactory:
    def build() -> Callable[[], Any]:
        import captum.attr as ca

        return make(ca, ctx.copy("captum"))

    return build


ZENNIT_SINGLE = ("lrp_epsilon", "lrp_zplus", "lrp_alpha_beta", "lrp_gamma", "lrp_flat")


def _zennit(ctx: Context, method: str, options: dict[str, Any]) -> PeerFactory:
    """Zennit's ``Gradient`` attributor with the same rule on every Conv/Linear layer (or the
    EpsilonPlusFlat composite for ``lrp`` and unknown relevance methods), BatchNorm merged."""
    def build() -> Callable[[], Any]:
        from zennit import composites, rules
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.types import Convolution, Linear

        canon = [SequentialMergeBatchNorm()]
        single = {
            "lrp_epsilon": lambda: rules.Epsilon(epsilon=options.get("epsilon", 0.25)),
            "lrp_zplus": rules.ZPlus,
            "lrp_alpha_beta": lambda: rules.AlphaBeta(alpha=options.get("alpha", 2.0),
                                                      beta=options.get("beta", 1.0)),
            "lrp_gamma": lambda: rules.Gamma(gamma=options.get("gamma", 0.25)),
            "lrp_flat": rules.Flat,
        }
        if method in single:
            layer_map = [(Convolution, single[method]()), (Linear, single[method]())]
            composite = composites.LayerMapComposite(layer_map=layer_map, canonizers=canon)
        else:
            composite = composites.EpsilonPlusFlat(canonizers=canon)
        model = ctx.copy("zennit")
        one_hot = torch.eye(1000, device=ctx.device)[ctx.targets]

        def run() -> torch.Tensor:
            with Gradient(model=model, composite=composite) as attributor:
                return attributor(ctx.x, one_hot)[1]

        return run

    return build


def peers_for(plan: Plan, ctx: Context) -> list[tuple[str, PeerFactory]]:
    """Peer implementations of ``plan.method`` at the same settings (label, factory)."""
    name, x, t = plan.method, ctx.x, ctx.targets
    merged = {**convlens.get_method(name).options, **plan.options} if name != MULTI else {}
    bs = merged.get("batch_size", 64)
    out: list[tuple[str, PeerFactory]] = []
    cam_layer = plan.layer or default_layer()

    def captum(label: str, make: Callable[[Any, torch.nn.Module], Callable[[], Any]]) -> None:
        out.append((f"captum.{label}", _captum(ctx, make)))

    if name == "saliency":
        captum("Saliency", lambda ca, m: lambda: ca.Saliency(m).attribute(x, target=t, abs=True))
    elif name == "input_x_gradient":
        captum("InputXGradient", lambda ca, m: lambda: ca.InputXGradient(m).attribute(x, target=t))
    elif name == "integrated_gradients":
        captum("IntegratedGradients", lambda ca, m: lambda: ca.IntegratedGradients(m).attribute(
            x, target=t, n_steps=merged["steps"], method="gausslegendre",
            internal_batch_size=bs))
    elif name == "guided_backprop":
        captum("GuidedBackprop", lambda ca, m: lambda: ca.GuidedBackprop(m).attribute(x, target=t))
    elif name == "deconvnet":
        captum("Deconvolution", lambda ca, m: lambda: ca.Deconvolution(m).attribute(x, target=t))
    elif name == "guided_gradcam":
        captum("GuidedGradCam", lambda ca, m: lambda: ca.GuidedGradCam(
            m, ctx.layer_module(m, cam_layer)).attribute(x, target=t))
    elif name == "deeplift":
        captum("DeepLift", lambda ca, m: lambda: ca.DeepLift(m).attribute(x, target=t))
    elif name in ("smoothgrad", "vargrad"):
        per_pass = max(1, bs // ctx.batch)

        def noise(ca: Any, m: torch.nn.Module, kind: str = name) -> Callable[[], Any]:
            flat = x.flatten(1)
            std = float(merged["sigma"] * (flat.amax(1) - flat.amin(1)).mean())
            return lambda: ca.NoiseTunnel(ca.Saliency(m)).attribute(
                x, nt_type=kind, nt_samples=merged["samples"], nt_samples_batch_size=per_pass,
                stdevs=std, target=t, abs=False)

        captum(f"NoiseTunnel({name})", noise)
    elif name == "gradient_shap":
        bases = torch.zeros(2, *x.shape[1:], device=x.device)
        captum("GradientShap", lambda ca, m: lambda: ca.GradientShap(m).attribute(
            x, baselines=bases, n_samples=merged["samples"], stdevs=merged["sigma"], target=t))
    elif name == "occlusion":
        window, stride = merged["window"], merged["stride"]
        w = (window, window) if isinstance(window, int) else tuple(window)
        s = (stride, stride) if isinstance(stride, int) else tuple(stride)
        captum("Occlusion", lambda ca, m: lambda: ca.Occlusion(m).attribute(
            x, sliding_window_shapes=(x.shape[1], *w), strides=(x.shape[1], *s),
            baselines=merged["baseline"], target=t,
            perturbations_per_eval=max(1, bs // ctx.batch)))
    elif name == "gradcam":
        captum("LayerGradCam", lambda ca, m: lambda: ca.LayerGradCam(
            m, ctx.layer_module(m, cam_layer)).attribute(x, target=t))
    elif plan.method.startswith("lrp") or (
            name != MULTI and convlens.get_method(name).family == "relevance"):
        out.append(("zennit.Gradient+" + (name if name in ZENNIT_SINGLE else "EpsilonPlusFlat"),
                    _zennit(ctx, name, merged)))
        captum("LRP", lambda ca, m: lambda: ca.LRP(m).attribute(x, target=t))
    out += _pgc_peers(plan, ctx, bs)
    return out


def _pgc_peers(plan: Plan, ctx: Context, bs: int) -> list[tuple[str, PeerFactory]]:
    """pytorch-grad-cam's implementation of ``plan.method`` when it has one (label, factory)."""
    name = plan.method
    pgc = {"gradcam": "GradCAM", "hirescam": "HiResCAM", "xgradcam": "XGradCAM",
           "gradcam_plus_plus": "GradCAMPlusPlus", "layercam": "LayerCAM",
           "eigencam": "EigenCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}
    if name not in pgc:
        return []
    kwargs = {"batch_size": bs} if name == "ablationcam" else {}
    return [(f"pgc.{pgc[name]}", _pgc(ctx, plan, pgc[name], **kwargs))]


# ---- one batch size -----------------------------------------------------------------------------

@dataclass
class Case:
    """One method at one batch size: ours, its own floor (and work-equivalent floor) and the
    peers, timed back to back in every round (see ``_timing.run_groups``)."""

    plan: Plan
    ours: Timed
    peers: list[Timed]
    floor: Timed
    bfloor: Timed | None
    single: Timed | None = None  # for several CAMs in one call: one gradcam, same rounds
    peer_notes: list[str] = field(default_factory=list)

    @property
    def members(self) -> list[Timed]:
        extra = [t for t in (self.bfloor, self.single) if t is not None]
        return [self.floor, self.ours, *self.peers, *extra]


def build_cases(ctx: Context, specs: list[convlens.Method], profile: Profile,
                selected: set[str] | None, channels: Callable[[str], int]
                ) -> tuple[list[Case], list[str]]:
    """All runners for one batch size, grouped by case; and the methods skipped (why)."""
    b, bclass = ctx.batch, profile.bclass(ctx.batch)
    fast, slow = profile.rounds_fast[bclass], profile.rounds_slow[bclass]
    measure = ctx.device.type == "cuda"
    cases: list[Case] = []
    skipped: list[str] = []

    def floor(kind: str, rounds: int, layer: str | None = None) -> Timed:
        key = f"floor:{kind}" + (f"({layer or default_layer()})" if kind == "layer" else "")
        return Timed(key, floor_fn(ctx, kind, b, layer), rounds)

    for spec in specs:
        if selected is not None and spec.name not in selected:
            continue
        plan = make_plan(spec, b, profile, channels)
        if isinstance(plan, str):
            skipped.append(f"{spec.name} @ batch {b}: {plan}")
            continue
        rounds = slow if plan.slow else (fast if spec.name in KEY else
                                          profile.rounds_other[bclass])
        own = floor(plan.floor, rounds, plan.layer if plan.floor == "layer" else None)
        bfloor = None
        if plan.batched is not None:
            key = "bfloor:" + "+".join(f"{k}{c}" for k, c in plan.batched)
            bfloor = Timed(key, batched_floor_fn(ctx, plan.batched), rounds,
                           measure_cuda_memory=measure)
        ours = Timed(f"ours:{spec.name}", ours_fn(ctx, plan), rounds,
                     measure_cuda_memory=measure and plan.slow)
        peers, notes = [], []
        for label, factory in peers_for(plan, ctx):
            try:
                peers.append(Timed(label, factory(), rounds, measure_cuda_memory=measure
                                   and plan.slow))
            except Exception as error:  # a peer missing or unable to build
                notes.append(f"{label}: {type(error).__name__}: {str(error).splitlines()[0]}")
        cases.append(Case(plan, ours, peers, own, bfloor, peer_notes=notes))
    cams = [c.plan.method for c in cases if c.plan.method in GRADIENT_CAMS]
    if len(cams) >= 2 and (selected is None or MULTI in selected or "gradcam" in selected):
        plan = Plan(MULTI, b, {"methods": tuple(cams)}, None, "layer", 1)
        plan.notes.append("one call: " + ",".join(cams) + "; compared with one gradcam call "
                          "timed in the same rounds")
        single = Plan("gradcam", b, {}, None, "layer", 1)
        cases.append(Case(plan, Timed(f"ours:{MULTI}", ours_fn(ctx, plan), fast), [],
                          floor("layer", fast), None,
                          Timed("ours:gradcam(single)", ours_fn(ctx, single), fast)))
    return cases, skipped


def pooled_floors(cases: list[Case]) -> dict[str, float]:
    """Median of every call of each floor kind at this batch (all cases pooled)."""
    pool: dict[str, list[float]] = {}
    for case in cases:
        pool.setdefault(case.floor.key, []).extend(case.floor.times)
    return {k: statistics.median(v) for k, v in pool.items() if v}


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.1f}ms" if value < 1 else f"{value:.2f}s"


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:+.2f}ms"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt_r(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _times(t: Timed | None) -> dict[str, Any]:
    return {} if t is None else {"median": t.median, "min": t.best, "times": t.times}


def summarise(cases: list[Case]) -> list[dict[str, Any]]:
    """Rows: medians, paired ratios (median of per-round ratios) and ratios of minima."""
    rows = []
    for case in cases:
        plan, floor, ours = case.plan, case.floor, case.ours
        n = plan.passes
        x_floor = paired_ratio(ours, floor)
        row = {
            "method": plan.method, "batch": plan.batch, "settings": plan.describe(),
            "ours_s": ours.median, "ours": _times(ours), "error": ours.error,
            "floor": f"{plan.floor} x {n}", "floor_single": _times(floor),
            "floor_s": floor.median * n if floor.median is not None else None,
            "x_floor": x_floor / n if x_floor is not None else None,
            "x_floor_min": _ratio(ours.best, floor.best * n if floor.best else None),
            "overhead_s": paired_difference(ours, floor, n),
            "floor_guessed": plan.guessed, "slow": plan.slow,
            "bfloor": _times(case.bfloor),
            "bfloor_s": case.bfloor.median if case.bfloor else None,
            "x_bfloor": paired_ratio(ours, case.bfloor) if case.bfloor else None,
            "peak_cuda_bytes": ours.peak_bytes,
            "bfloor_peak_cuda_bytes": case.bfloor.peak_bytes if case.bfloor else None,
            "notes": plan.notes + case.peer_notes,
            "peers": [],
        }
        for p in case.peers:
            px = paired_ratio(p, floor)
            row["peers"].append({
                "peer": p.key, "s": p.median, **{f"peer_{k}": v for k, v in _times(p).items()},
                "error": p.error, "ours_over_peer": paired_ratio(ours, p),
                "ours_over_peer_min": _ratio(ours.best, p.best),
                "peer_x_floor": px / n if px is not None else None,
                "peer_overhead_s": paired_difference(p, floor, n),
                "peak_cuda_bytes": p.peak_bytes})
        if case.single is not None:
            row["single_gradcam"] = _times(case.single)
            row["x_single_gradcam"] = paired_ratio(ours, case.single)
            row["x_single_gradcam_min"] = _ratio(ours.best, case.single.best)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], floors: dict[str, float], batch: int) -> str:
    lines = [f"### batch {batch}", "",
             "floors (median of all their calls): " + ", ".join(
                 f"{k} {_fmt_s(v)}" for k, v in floors.items()), "",
             "| method | settings | ours (median / min) | floor | x floor | ours - floor | "
             "x bfloor | peers: median (ours/peer) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ours = (f"{_fmt_s(row['ours']['median'])} / {_fmt_s(row['ours']['min'])}"
                if not row["error"] else "ERROR")
        peers = "; ".join(
            f"{p['peer']} {_fmt_s(p['s'])} ({_fmt_r(p['ours_over_peer'])})" if not p["error"]
            else f"{p['peer']} n/a ({p['error'][:70]})" for p in row["peers"]) or "-"
        extra = ""
        if row["method"] == MULTI:
            extra = f" [{_fmt_r(row['x_single_gradcam'])} one gradcam]"
        floor_name = row["floor"] + ("?" if row["floor_guessed"] else "")
        lines.append(f"| {row['method']}{extra} | {row['settings'] or 'defaults'} | {ours} | "
                     f"{floor_name} = {_fmt_s(row['floor_s'])} | {_fmt_r(row['x_floor'])} | "
                     f"{_fmt_ms(row['overhead_s'])} | {_fmt_r(row['x_bfloor'])} | {peers} |")
    notes = [f"- {row['method']}: {'; '.join(row['notes'])}" for row in rows if row["notes"]]
    notes += [f"- {row['method']}: ERROR {row['error']}" for row in rows if row["error"]]
    if notes:
        lines += ["", "notes:"] + notes
    return "\n".join(lines)


# ---- targets from the issue ---------------------------------------------------------------------

def _both(median: float | None, best: float | None) -> str:
    return f"{_fmt_r(median)} (min-based {_fmt_r(best)})"


def check_targets(all_rows: list[dict[str, Any]], memory: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, judged on medians; the ratio of best-of-rounds times is shown
    beside each (on a shared machine the minimum is the least disturbed measurement)."""
    out = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("MET" if ok else "NOT MET")

    relevance = {m.name for m in convlens.methods("relevance")}
    for row in all_rows:
        m, b = row["method"], row["batch"]
        if row["error"]:
            out.append(f"{m} @ {b}: ERROR {row['error']}")
            continue
        if m in ("saliency", "input_x_gradient", "gradcam", "layercam"):
            peers = [p for p in row["peers"] if p["ours_over_peer"] is not None]
            ok_floor = row["x_floor"] <= 1.10
            ok_peers = all(p["ours_over_peer"] <= 1.0 for p in peers) if peers else None
            out.append(f"{m} @ {b}: {_both(row['x_floor'], row['x_floor_min'])} of its floor "
                       f"(<= 1.10x: {verdict(ok_floor)}); ours/peer "
                       + ", ".join(f"{p['peer']} "
                                   f"{_both(p['ours_over_peer'], p['ours_over_peer_min'])}"
                                   for p in peers)
                       + f" (never slower: {verdict(ok_peers)})")
        elif m == "integrated_gradients":
            cap = next((p for p in row["peers"] if p["s"] is not None), None)
            ok = row["x_floor"] <= 1.05
            out.append(f"integrated_gradients @ {b} ({row['settings']}): "
                       f"{_both(row['x_floor'], row['x_floor_min'])} of n floors (<= 1.05x: "
                       f"{verdict(ok)}), {_fmt_r(row['x_bfloor'])} of the work-equivalent floor; "
                       + (f"{cap['peer']} {_fmt_r(cap['peer_x_floor'])} of n floors"
                          if cap else "Captum n/a"))
        elif m == MULTI:
            ok = row["x_single_gradcam"] is not None and row["x_single_gradcam"] <= 1.3
            out.append(f"{MULTI} ({len(row['settings'].split(','))} CAMs, one call) @ {b}: "
                       f"{_both(row['x_single_gradcam'], row['x_single_gradcam_min'])} of one "
                       f"gradcam (<= 1.3x: {verdict(ok)})")
        elif m == "eigencam":
            ok = row["x_floor"] <= 1.2
            out.append(f"eigencam @ {b}: {_both(row['x_floor'], row['x_floor_min'])} of one "
                       f"no-grad forward (<= 1.2x: {verdict(ok)})")
        elif m in relevance or m.startswith("lrp"):
            ok = row["x_floor"] <= 1.5
            out.append(f"{m} @ {b}: {_both(row['x_floor'], row['x_floor_min'])} of "
                       f"forward+backward (<= 1.5x: {verdict(ok)})")
    if not relevance and not any(r["method"].startswith("lrp") for r in all_rows):
        out.append("LRP: no relevance-family method registered at the time of this run "
                   "(target untested)")
    ig = [m for m in memory if m["method"] == "integrated_gradients"]
    if ig:
        lines = "; ".join(f"{m['runner']} ({m['settings']}) {m['peak_mib']:.0f} MiB" for m in ig
                          if m.get("peak_mib") is not None)
        out.append(f"integrated_gradients peak RSS growth: {lines}")
    return out


# ---- CPU peak memory (parent side) --------------------------------------------------------------

MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def memory_jobs(rows: list[dict[str, Any]], profile: Profile) -> list[dict[str, Any]]:
    """One child process per n-pass method at the smallest batch: ours, the work-equivalent
    floor and the peers, measured one after the other; for integrated gradients also the
    scaling check (peak vs ``steps`` and ``batch_size``)."""
    jobs = []
    smallest = min(r["batch"] for r in rows) if rows else 1
    for row in rows:
        if row["batch"] != smallest or not row["slow"] or row["method"] == MULTI:
            continue
        runners = ["ours"] + (["bfloor"] if row["bfloor_s"] is not None else [])
        runners += [p["peer"] for p in row["peers"] if not p["error"]]
        todo = [{"runner": r, "options": {}} for r in runners]
        if row["method"] == "integrated_gradients":
            small = 4 if profile.name == "quick" else 10
            steps = 4 if profile.name == "quick" else 50
            for opts in ({"steps": steps, "batch_size": small},
                         {"steps": 2 * steps, "batch_size": small}):
                todo += [{"runner": r, "options": opts}
                         for r in ("ours", "bfloor", "captum.IntegratedGradients")]
        jobs.append({"method": row["method"], "batch": smallest, "profile": profile.name,
                     "model": _MODEL["name"], "measurements": todo})
    return jobs


def run_memory_jobs(jobs: list[dict[str, Any]], log: Callable[[str], None]
                    ) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_MAX_"}
    env.update(MEMORY_ENV)
    for job in jobs:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(job)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
            found = json.loads(done.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as error:
            found = [{"method": job["method"], "runner": "all", "options": {},
                      "error": type(error).__name__}]
        results += found
        log(f"memory {job['method']}: " + ", ".join(
            f"{m['runner']}{m['options'] or ''} " + (f"{m['peak_mib']:.0f} MiB"
                                                      if m.get("peak_mib") is not None
                                                      else f"error {m.get('error')}")
            for m in found))
    return results


def memory_child(job: dict[str, Any]) -> None:
    """Runs in a fresh process; prints one JSON list of measurements.

    Allocations of 64 KiB and more are mmapped and returned on free (``MEMORY_ENV``), so the
    resident set follows live memory and several calls can be measured one after the other
    (checked: repeated measurements of the same call agree within 1%).
    """
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    clf, images = load_inputs(torch.device("cpu"))
    profile = PROFILES[job["profile"]]
    ctx = Context(clf, torch.device("cpu"), job["batch"], images)
    spec = convlens.get_method(job["method"])
    forward_pass(ctx.module, ctx.x[:1])  # lazy initialisation of the libraries, not counted
    out = []
    for item in job["measurements"]:
        plan = make_plan(spec, job["batch"], profile, lambda layer: layer_channels(clf, layer))
        assert isinstance(plan, Plan)
        plan.options.update(item["options"])
        merged = {**spec.options, **plan.options}
        if item["options"]:
            n = merged.get("steps", merged.get("samples", 1))
            plan.batched = tuple(("pixel", c) for c in _chunks(job["batch"] * n,
                                                               merged["batch_size"]))
        result: dict[str, Any] = {"method": job["method"], "batch": job["batch"],
                                  "runner": item["runner"], "options": item["options"],
                                  "settings": plan.describe()}
        fn = None
        try:
            if item["runner"] == "ours":
                fn = ours_fn(ctx, plan)
            elif item["runner"] == "bfloor":
                fn = batched_floor_fn(ctx, plan.batched)
            else:
                fn = dict(peers_for(plan, ctx))[item["runner"]]()
            result.update(peak_rss_growth(fn))
            result["peak_mib"] = result["peak_growth_bytes"] / 2**20
        except Exception as error:
            result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
        out.append(result)
        del fn
    print(json.dumps(out))


# ---- main ---------------------------------------------------------------------------------------

def load_inputs(device: torch.device) -> tuple[Any, torch.Tensor]:
    from convlens.io.samples import sample_images

    spec = MODELS[_MODEL["name"]][0]
    torch.manual_seed(0)  # random-weight models: the same weights in every run
    if spec is None:
        clf = convlens.load_model(device=str(device))
    else:
        import torchvision

        module = torchvision.models.get_model(spec, weights=None).eval()
        clf = convlens.load_model(module, device=str(device), input_size=224)
    images = clf.preprocess(list(sample_images().values()))
    return clf, images


_CHANNELS: dict[str, int] = {}


def layer_channels(clf: Any, layer: str) -> int:
    if layer not in _CHANNELS:
        info = {i.name: i.output_shape for i in convlens.layers(clf)}
        _CHANNELS[layer] = int(info[layer][0])
    return _CHANNELS[layer]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-sizes", default=None, help="e.g. 1,16 (default per profile)")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated method names ({MULTI} = several CAMs in one call)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds for single-pass runners (n-pass: min(3, rounds))")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run")
    parser.add_argument("--gpu-script", action="store_true",
                        help="CUDA, batch 1 and 64, full settings; JSON also to $OUT")
    parser.add_argument("--no-memory", action="store_true", help="skip CPU peak-memory children")
    parser.add_argument("--output", default=None, help="JSON path (default results/<device>.json)")
    parser.add_argument("--model", default="bundled", choices=sorted(MODELS),
                        help="bundled EfficientNet-Lite0, or torchvision's ResNet-18 (random "
                             "weights; default batch sizes 1,4,16 and IG steps=32)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _use_model(name: str) -> None:
    """Select the model; ResNet-18 gets the issue's integrated-gradients settings."""
    _MODEL["name"] = name
    if name != "bundled":
        for method, options in RESNET18_SETTINGS.items():
            for key in ("cpu1", "cpuN", "gpu1", "gpuN"):  # "quick" keeps its tiny settings
                SETTINGS[method][key] = dict(options)


def _profile(args: argparse.Namespace, device: torch.device) -> Profile:
    """The run's profile: quick, gpu or cpu, with the command line's batch sizes and rounds
    (and ResNet-18's batch sizes) put in."""
    profile = copy.deepcopy(PROFILES["quick" if args.quick else
                                      ("gpu" if device.type == "cuda" else "cpu")])
    if args.model == "resnet18" and not args.quick:
        profile.batch_sizes = list(RESNET18_BATCHES)
    if args.batch_sizes:
        profile.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.rounds:
        profile.rounds_fast = {k: args.rounds for k in profile.rounds_fast}
        profile.rounds_slow = {k: min(3, args.rounds) for k in profile.rounds_slow}
        profile.rounds_other = dict(profile.rounds_fast)
    return profile


def _cuda_memory_table(all_rows: list[dict[str, Any]]) -> str:
    """The Markdown table of peak CUDA memory of the n-pass calls (ours, bfloor, peers)."""
    lines = ["### peak CUDA memory of n-pass calls (max_memory_allocated - allocated before)",
             "", "| method | batch | ours MiB | bfloor MiB | peers MiB |",
             "|---|---|---|---|---|"]
    for row in all_rows:
        if row["peak_cuda_bytes"] is None:
            continue
        mib = [row["peak_cuda_bytes"], row["bfloor_peak_cuda_bytes"]]
        peers = "; ".join(f"{p['peer']} {p['peak_cuda_bytes'] / 2**20:.0f}"
                          for p in row["peers"] if p["peak_cuda_bytes"] is not None)
        lines.append(f"| {row['method']} | {row['batch']} | "
                     + " | ".join("-" if v is None else f"{v / 2**20:.0f}" for v in mib)
                     + f" | {peers or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        _use_model(json.loads(args.memory_child).get("model", "bundled"))
        memory_child(json.loads(args.memory_child))
        return 0
    _use_model(args.model)
    if args.gpu_script:
        args.device = "cuda"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here; run with --device cpu", file=sys.stderr)
        return 2
    profile = _profile(args, device)
    torch.set_num_threads(args.threads)
    os.environ["BENCH_THREADS"] = str(args.threads)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    clf, images = load_inputs(device)
    facts = machine_facts(device)
    specs = convlens.methods()
    selected = set(args.methods.split(",")) if args.methods else None
    header = [
        "# convlens attribution benchmark", "", format_facts(facts),
        f"model: {MODELS[args.model][2]}",
        f"profile {profile.name}: batch sizes {profile.batch_sizes}; timed rounds per batch class"
        f" ('1' = batch <= 4): floors and target methods {profile.rounds_fast}, other "
        f"single-pass {profile.rounds_other}, n-pass {profile.rounds_slow}; 1 warm-up call "
        "each; medians",
        f"registered methods ({len(specs)}): " + ", ".join(s.name for s in specs),
        "ours: target=None (arg-max); peers: the same targets, explicit. Each method is timed "
        "back to back with its own floor and peers in every round; ratios are paired (median "
        "over rounds of the per-round ratio). x floor = ours / (floor x passes); x bfloor = "
        "ours / the same passes at our chunk sizes; ours/peer < 1 = ours faster.", "",
    ]
    print("\n".join(header), flush=True)
    all_rows: list[dict[str, Any]] = []
    tables: list[str] = []
    skipped_all: list[str] = []
    for batch in profile.batch_sizes:
        ctx = Context(clf, device, batch, images)
        cases, skipped = build_cases(ctx, specs, profile, selected,
                                     lambda layer: layer_channels(clf, layer))
        skipped_all += skipped
        groups = [case.members for case in cases]
        log(f"batch {batch}: {len(cases)} cases, {sum(map(len, groups))} timed callables")
        bclass = profile.bclass(batch)
        run_groups(groups, profile.rounds_fast[bclass], device, seed=batch, progress=log)
        rows = summarise(cases)
        all_rows += rows
        table = format_table(rows, pooled_floors(cases), batch)
        tables.append(table)
        print(table + "\n", flush=True)
        del cases, groups, ctx
        if device.type == "cuda":
            torch.cuda.empty_cache()
    memory: list[dict[str, Any]] = []
    if device.type == "cpu" and not args.no_memory:
        memory = run_memory_jobs(memory_jobs(all_rows, profile), log)
        lines = ["### peak memory (CPU: peak RSS growth during one call, child process with "
                 + ", ".join(f"{k}={v}" for k, v in MEMORY_ENV.items()) + ")",
                 "", "| method | runner | settings | peak MiB |", "|---|---|---|---|"]
        for m in memory:
            peak = f"{m['peak_mib']:.0f}" if m.get("peak_mib") is not None else m.get("error")
            lines.append(f"| {m['method']} | {m['runner']} | {m.get('settings', '')} | {peak} |")
        tables.append("\n".join(lines))
        print(tables[-1] + "\n", flush=True)
    elif device.type == "cuda":
        tables.append(_cuda_memory_table(all_rows))
        print(tables[-1] + "\n", flush=True)
    targets = check_targets(all_rows, memory)
    footer = ["### targets (from the issue)", ""] + [f"- {t}" for t in targets]
    if skipped_all:
        footer += ["", "skipped:"] + [f"- {s}" for s in skipped_all]
    footer.append(f"\ntotal wall time {time.perf_counter() - started:.0f}s")
    print("\n".join(footer), flush=True)
    report = {"facts": facts, "profile": profile.__dict__, "rows": all_rows, "memory": memory,
              "targets": targets, "skipped": skipped_all,
              "wall_s": time.perf_counter() - started}
    text = "\n".join(header) + "\n" + "\n\n".join(tables) + "\n\n" + "\n".join(footer) + "\n"
    name = device.type + ("" if args.model == "bundled" else f"-{args.model}") + (
        "-quick" if profile.name == "quick" else "")
    paths = [Path(args.output) if args.output else RESULTS / f"{name}.json"]
    if args.gpu_script and os.environ.get("OUT"):
        paths.append(Path(os.environ["OUT"]) / f"{name}.json")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=str))
        path.with_suffix(".md").write_text(text)
    log(f"wrote {', '.join(str(p) for p in paths)} (+ .md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
