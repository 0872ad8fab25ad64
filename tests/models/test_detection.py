"""Segmentation and detection: one mask or one box explained through score functions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convlens as cl
from convlens.attribution.targets import box_score, mask_score
from convlens.errors import TargetError


class TinySegNet(nn.Module):
    """Conv encoder, upsampling decoder: per-pixel class logits (N, classes, H, W)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                                     nn.Conv2d(8, classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.decoder(self.encoder(x))}  # torchvision's segmentation layout


class TinyDetector(nn.Module):
    """One box per cell of a 4x4 feature grid (fixed anchors), batched outputs in a dict."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=4, padding=1), nn.ReLU())
        self.cls_head = nn.Conv2d(8, classes, 1)
        self.box_head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        logits = self.cls_head(features).flatten(2).transpose(1, 2)        # (N, 16, classes)
        boxes = self.box_head(features).flatten(2).transpose(1, 2)         # (N, 16, 4)
        return {"boxes": boxes, "logits": logits, "scores": logits.softmax(-1).amax(-1)}


def _seeded(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    return model.eval().double()


def test_mask_score_on_a_linear_segmenter_has_the_closed_form():
    """out = W x + b per pixel: d score / d x[ch, i, j] = W[c, ch] * mask[i, j]."""
    model = _seeded(nn.Conv2d(3, 4, 1))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:5, 1:7] = True
    got = cl.attribute(model, x, "saliency", target=mask_score(2, mask))
    expected = model.weight[2, :, 0, 0].abs().view(1, 3, 1, 1) * mask.double()
    torch.testing.assert_close(got.double(), expected.expand(2, -1, -1, -1), rtol=1e-6,
                               atol=1e-7)
    # input x gradient sums to the score minus the bias over the mask (completeness)
    ixg = cl.attribute(model, x, "input_x_gradient", target=mask_score(2, mask))
    score = (model(x)[:, 2] * mask).sum(dim=(1, 2))
    bias = model.bias[2] * mask.sum()
    torch.testing.assert_close(ixg.double().sum(dim=(1, 2, 3)), (score - bias).detach(),
                               rtol=1e-5, atol=1e-5)


def test_gradcam_of_one_mask_matches_a_reference(snapshot):
    model = _seeded(TinySegNet())
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        predicted = model(x)["out"].argmax(1) == 1           # (N, H, W): the class-1 pixels
    target = mask_score(1, predicted)
    snap = snapshot(model)
    got = cl.attribute(model, x, "gradcam", target=target, layer="encoder", relu=False)
    snap.assert_unchanged()
    store = {}
    handle = model.encoder.register_forward_hook(lambda _m, _i, o: store.setdefault("a", o))
    try:
        out = model(x)["out"]
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad((out[:, 1] * predicted).sum(), store["a"])
    expected = (grad.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(1, keepdim=True)
    expected = expected.detach()
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_box_score_localises_to_the_box_cell(snapshot):
    """A 1x1 head reads one cell per box: HiResCAM of the backbone is zero elsewhere."""
    model = _seeded(TinyDetector())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    box, cls = 6, 2                                   # cell (1, 2) of the 4x4 grid
    snap = snapshot(model)
    got = cl.attribute(model, x, "hirescam", target=box_score(box, class_index=cls),
                       layer="backbone", output="logits", relu=False)
    snap.assert_unchanged()
    assert got.shape == (2, 1, 4, 4)
    with torch.no_grad():
        features = model.backbone(x)
    expected = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    w = model.cls_head.weight[cls, :, 0, 0]
    expected[:, 0, 1, 2] = (features[:, :, 1, 2] * w).sum(1)   # sum_k G_k A_k at the cell
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-8)
    # the per-box score (post-softmax) is explained when its output is selected
    scores = cl.attribute(model, x, "saliency", target=box_score(box), output="scores")
    assert scores.shape == x.shape and float(scores.abs().max()) > 0


def test_score_helpers_refuse_the_wrong_output_with_the_fix():
    model = _seeded(TinyDetector())
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(TargetError, match="output="):
        cl.attribute(model, x, "saliency", target=box_score(0, class_index=1), output="scores")
    with pytest.raises(TargetError, match="box 99"):
        cl.attribute(model, x, "saliency", target=box_score(99, 1), output="logits")
    seg = _seeded(TinySegNet())
    with pytest.raises(TargetError, match="does not fit"):
        cl.attribute(seg, torch.randn(1, 3, 12, 12, dtype=torch.float64), "saliency",
                     target=mask_score(0, torch.ones(5, 5)))
    with pytest.raises(TargetError, match="int"):
        mask_score("cat", torch.ones(2, 2))
    # methods that need class probabilities refuse score functions (convlens 4)
    with pytest.raises(TargetError, match="needs a class index"):
        cl.attribute(seg, torch.randn(1, 3, 12, 12, dtype=torch.float64), "scorecam",
                     target=mask_score(0, torch.ones(12, 12)))
