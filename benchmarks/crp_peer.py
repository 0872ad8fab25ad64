"""CRP against its public implementation, zennit-crp (Achtibat et al. 2023), in float64.

zennit-crp 0.6.0 pins ``zennit<=0.4.6`` while convlens's test peer is Zennit 0.5.1, so the
peer runs in its own environment and process; the two exchange files. This script, run with
convlens's Python, builds the networks (seeded), writes their weights, the inputs and the
conditions (layer, channels, targets) to a folder, runs itself with ``--peer`` under the peer's
Python (zennit-crp's ``CondAttribution`` with ``exclude_parallel=True``, its default), reads the
peer's conditional heatmaps and channel relevances back and compares them with
``cl.concept_maps`` / ``cl.concept_relevance``.

Networks: a VGG-like net (torchvision's VGG-11 feature stack with BatchNorm, global pooling and
one linear layer) and torchvision's ResNet-18, both seeded (``num_classes=10``). BatchNorm
``eps`` is 0 because Zennit's merge keeps it in the merged layer's forward (see
tests/attribution/test_relevance.py, ``_zero_bn_eps``). Canonizers on the peer's side:
``SequentialMergeBatchNorm`` (VGG-like) and ``zennit.torchvision.ResNetCanonizer`` (ResNet):
convlens merges BatchNorm and routes residual sums through its own rules without them.
Composites: Zennit's ``EpsilonPlusFlat`` and ``EpsilonGammaBox`` (bounds: each sample's
per-channel min and max, convlens's default) against ``epsilon_plus_flat`` and
``epsilon_gamma_box``. The channels are each sample's four most relevant (by convlens).

Usage (the peer's environment as set up for this comparison)::

    python3.11 -m venv /tmp/crpenv
    /tmp/crpenv/bin/pip install torch==2.14.1 torchvision==0.29.1 zennit-crp   # zennit 0.4.6
    .venv/bin/python benchmarks/crp_peer.py --peer-python /tmp/crpenv/bin/python
    # --quick: 1 image, one layer per network; --strict: exit 1 where CRP differs although
    # the unconditioned LRP maps agree (tests/attribution/test_crp_peer.py)

Writes benchmarks/results/crp_peer.md (and prints it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
STRICT = 1e-10  # relative, float64
#: (convlens composite, the peer's composite): Zennit's stock EpsilonPlusFlat, whose z+ rule
#: in zennit 0.4.6 keeps positive biases, and the same composite with convlens's z+, which
#: ignores biases (docs/architecture.md; Zennit 0.5's ``ZPlus(zero_params="bias")``).
CASES = [("epsilon_plus_flat", "EpsilonPlusFlat"), ("epsilon_plus_flat", "EpsilonPlusFlat-nobias"),
         ("epsilon_gamma_box", "EpsilonGammaBox")]
LAYERS = {"vgg": ["features.10", "features.17", "features.24"],
          "resnet": ["layer1", "layer2", "layer3", "layer4"]}


def build(network: str) -> nn.Module:
    """The seeded float64 network (the same in both processes: torchvision only)."""
    import torchvision

    torch.manual_seed(0)
    if network == "vgg":
        from torchvision.models.vgg import cfgs, make_layers

        model = nn.Sequential()
        model.features = make_layers(cfgs["A"], batch_norm=True)
        model.pool = nn.AdaptiveAvgPool2d(1)
        model.flatten = nn.Flatten()
        model.fc = nn.Linear(512, 10)
    else:
        model = torchvision.models.resnet18(weights=None, num_classes=10)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # not the identity, so merging matters
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(1 + torch.randn(c, generator=generator) * 0.1)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                module.eps = 0.0
    return model.double().eval()


# ----------------------------------------------------------------------------- the peer

def peer(folder: Path) -> None:
    """zennit-crp's side: conditional heatmaps and layer relevances for every case."""
    from crp.attribution import CondAttribution
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    cases = torch.load(folder / "cases.pt")
    results = []
    for case in cases:
        model = build(case["network"])
        model.load_state_dict(case["state"])
        canonizers = ([SequentialMergeBatchNorm()] if case["network"] == "vgg"
                      else [ResNetCanonizer()])
        attribution = CondAttribution(model)
        maps, relevances, heatmaps, seconds = [], [], [], 0.0
        for n, (sample, target) in enumerate(zip(case["x"], case["targets"])):
            channels = case["channels"][n].tolist()
            data = sample[None].repeat(len(channels), 1, 1, 1).requires_grad_(True)
            composite = _composite(case["peer"], data, canonizers)
            conditions = [{"y": [int(target)], case["layer"]: [c]} for c in channels]
            start = time.perf_counter()
            result = attribution(data, conditions, composite, record_layer=[case["layer"]])
            seconds += time.perf_counter() - start
            maps.append(result.heatmap.detach())
            # The unconditioned map and R_c from the relevance recorded at the layer without a
            # layer condition (with one, the recorded relevance is twice the relevance: the
            # partial backward pass reaches the retained gradient twice).
            plain = attribution(data[:1], [{"y": [int(target)]}],
                                _composite(case["peer"], data[:1], canonizers),
                                record_layer=[case["layer"]])
            heatmaps.append(plain.heatmap[0].detach())
            relevances.append(plain.relevances[case["layer"]][0].flatten(1).sum(1)[channels])
        results.append({"maps": torch.stack(maps), "relevances": torch.stack(relevances),
                        "heatmap": torch.stack(heatmaps), "seconds": seconds})
    from importlib.metadata import version

    torch.save({"versions": f"zennit-crp {version('zennit-crp')} (zennit {version('zennit')})",
                "results": results}, folder / "peer.pt")


def _composite(name: str, data: torch.Tensor, canonizers: list):
    from zennit import composites
    from zennit.rules import Epsilon, Flat, ZPlus
    from zennit.types import Convolution, Linear

    if name == "EpsilonGammaBox":  # convlens's default bounds: per sample and channel
        low = data.detach().amin((2, 3), keepdim=True).expand_as(data)
        high = data.detach().amax((2, 3), keepdim=True).expand_as(data)
        return composites.EpsilonGammaBox(low, high, canonizers=canonizers)
    if name == "EpsilonPlusFlat":
        return composites.EpsilonPlusFlat(canonizers=canonizers)
    try:
        zplus = ZPlus(zero_params="bias")  # Zennit >= 0.5
    except TypeError:
        zplus = ZPlus()  # 0.4.6: the positive term's bias is the only one kept; zero it
        zplus.param_modifiers[0] = (lambda param, name: torch.zeros_like(param)
                                    if name == "bias" else param.clamp(min=0))
    base = (composites.layer_map_base() if hasattr(composites, "layer_map_base")  # >= 0.5
            else composites.LAYER_MAP_BASE)
    layer_map = base + [(Convolution, zplus), (torch.nn.Linear, Epsilon())]
    return composites.SpecialFirstLayerMapComposite(layer_map, [(Linear, Flat())],
                                                    canonizers=canonizers)


# ------------------------------------------------------------------------ our side

def _relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    scale = theirs.abs().max().item()
    return (ours - theirs).abs().max().item() / scale if scale else float("nan")


def compare(peer_python: str, quick: bool) -> tuple[str, float]:
    import convlens as cl

    n = 1 if quick else 2
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    targets = [3, 8][:n]
    cases, ours = [], []
    for network, layers in LAYERS.items():
        model = build(network)
        for composite, peer_composite in CASES:
            for layer in layers[-1:] if quick else layers:
                relevance = cl.concept_relevance(model, x, layer, target=targets,
                                                 composite=composite)
                channels = relevance.topk(4, dim=1).indices
                start = time.perf_counter()
                results = [cl.concept_maps(model, x[i:i + 1], layer,
                                           channels=channels[i].tolist(),
                                           target=targets[i:i + 1], composite=composite)
                           for i in range(n)]
                seconds = time.perf_counter() - start
                cases.append({"network": network, "composite": composite, "layer": layer,
                              "peer": peer_composite,
                              "x": x, "targets": torch.tensor(targets), "channels": channels,
                              "state": model.state_dict()})
                ours.append({"maps": torch.cat([r.maps for r in results]),
                             "heatmap": torch.cat([r.heatmap for r in results]),
                             "relevances": relevance, "seconds": seconds})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.save(cases, folder / "cases.pt")
        subprocess.run([peer_python, __file__, "--peer", str(folder)], check=True)
        answer = torch.load(folder / "peer.pt")
    theirs = answer["results"]
    lines = [f"# CRP: convlens vs {answer['versions']}, float64", "",
             f"{n} image(s) 32x32, each sample's 4 most relevant channels; max |ours - theirs| "
             "/ max |theirs| per case. Seconds: the conditional maps only (ours also computes "
             "the unconditioned map and the bypass: 2 more backward passes), this machine "
             "(shared 2-core CPU, one thread), indicative.", "",
             "| network | ours | zennit | layer | CRP maps | R_c | LRP map | ours s | "
             "zennit-crp s |", "|---|---|---|---|---|---|---|---|---|"]
    worst, failures = 0.0, []
    for case, mine, peers in zip(cases, ours, theirs):
        d_maps = _relative(mine["maps"], peers["maps"])
        d_rel = _relative(mine["relevances"].gather(1, case["channels"]), peers["relevances"])
        d_lrp = _relative(mine["heatmap"], peers["heatmap"])
        worst = max(worst, d_maps, d_rel, d_lrp)
        # Where the two LRP engines agree (the unconditioned maps), CRP must agree too; the
        # bias-free z+ composite is convlens's own and must agree in full.
        if (d_lrp <= STRICT or case["peer"].endswith("nobias")) and \
                not max(d_maps, d_rel, d_lrp) <= STRICT:
            failures.append(f"{case['network']} {case['peer']} {case['layer']}")
        lines.append(f"| {case['network']} | {case['composite']} | {case['peer']} | "
                     f"{case['layer']} | "
                     f"{d_maps:.1e} | {d_rel:.1e} | {d_lrp:.1e} | {mine['seconds']:.2f} | "
                     f"{peers['seconds']:.2f} |")
    lines += ["", f"Worst relative difference: {worst:.1e}. Where the unconditioned LRP maps "
              f"agree within {STRICT:g} (and always with the bias-free z+), CRP maps and R_c "
              f"differ by more than that in: {', '.join(failures) or 'none'}."]
    return "\n".join(lines) + "\n", failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peer-python", default="/tmp/crpenv/bin/python",
                        help="a Python where zennit-crp imports")
    parser.add_argument("--quick", action="store_true", help="1 image, one layer each")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 where CRP differs although the LRP maps agree")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "crp_peer.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny float64 convolutions: one thread is faster here
    if args.peer:
        peer(args.peer)
        return 0
    report, failures = compare(args.peer_python, args.quick)
    print(report)
    if not args.quick:
        args.out.write_text(report)
    return 1 if args.strict and failures else 0


if __name__ == "__main__":
    sys.exit(main())
