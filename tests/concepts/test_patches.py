"""Patches: receptive fields against their closed form, conditional boxes, crops from photos."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_models import TinyResNet, TinyVGG, seeded

from convlens.concepts.patches import (
    PatchError,
    crop_patch,
    patch_box,
    patch_boxes,
    receptive_box,
    receptive_boxes,
)
from convlens.models.classifier import Classifier
from convlens.preprocessing import Preprocessing


def _clip(low: int, high: int, size: int) -> tuple[int, int]:
    return max(0, low), min(size, high)


def _closed_form(row: int, col: int, size: int, stride: int, offset: int, extent: int):
    """The input rows stride*i - offset .. stride*i - offset + extent (exclusive), clipped."""
    left, right = _clip(stride * col - offset, stride * col - offset + extent, size)
    top, bottom = _clip(stride * row - offset, stride * row - offset + extent, size)
    return left, top, right, bottom


@pytest.mark.parametrize(("layer", "stride", "offset", "extent"), [
    ("features.2", 1, 2, 5),    # two 3x3 convs, padding 1: 5x5 around the position
    ("features.6", 2, 4, 10),   # then 2x2 max pool and a 3x3 conv: 10x10, stride 2
    ("features.7", 4, 4, 12),   # then a 2x2 average pool: 12x12, stride 4
])
def test_receptive_box_matches_the_closed_form_of_3x3_convs_and_pools(layer, stride, offset,
                                                                       extent):
    model = seeded(TinyVGG(classes=3), dtype=torch.float32)
    grid = 32 // stride
    for row, col in [(0, 0), (3, 4), (grid // 2, grid - 1), (grid - 1, grid - 1)]:
        got = receptive_box(model, layer, (row, col), (3, 32, 32))
        assert got == _closed_form(row, col, 32, stride, offset, extent), (layer, row, col)
    # every position of the grid (rows and columns are computed and cached apart)
    positions = [(row, col) for row in range(grid) for col in range(grid)]
    boxes = receptive_boxes(seeded(TinyVGG(classes=3)), layer, positions, (1, 3, 32, 32))
    assert boxes == [_closed_form(r, c, 32, stride, offset, extent) for r, c in positions]


def test_receptive_box_sees_through_dead_relus_and_the_maxpool_choice():
    """Weights that kill every ReLU would give an empty gradient; the structure does not."""
    model = seeded(TinyVGG(classes=3), dtype=torch.float32)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.fill_(-1.0)
    assert receptive_box(model, "features.6", (5, 5), (3, 32, 32)) == (6, 6, 16, 16)


def test_receptive_box_of_a_residual_network_covers_both_paths():
    model = seeded(TinyResNet(classes=3), dtype=torch.float32)
    # layer2's conv2 (i-1..i+1), its stride-2 conv1 (2i-3..2i+3), block1's two 3x3 convs
    # (2i-5..2i+5) and the stem (2i-6..2i+6); the 1x1 downsample path lies inside
    assert receptive_box(model, "layer2", (4, 4), (3, 32, 32)) == (2, 2, 15, 15)


def test_a_position_outside_the_layer_is_one_clear_error():
    model = seeded(TinyVGG(classes=3), dtype=torch.float32)
    with pytest.raises(PatchError, match=r"outside layer 'features.6'.s 16x16 output"):
        receptive_box(model, "features.6", (16, 0), (3, 32, 32))


def _bright_square_model():
    """A 1x1-conv "detector" of bright red pixels and a head reading its channel 0."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(2, 2))
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.zero_()
                module.bias.zero_()
        net[0].weight[0, 0, 1, 1] = 1.0
        net[2].weight[0, 0, 1, 1] = 1.0
        net[6].weight[0, 0] = 1.0
    return net.eval()


def test_patch_box_tightens_to_where_the_channel_and_position_look():
    net = _bright_square_model()
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, 10:13, 20:23] = 1.0  # a red 3x3 spot
    box = patch_box(net, x, "3", 0, (11, 21), "relevance", min_side=1)
    assert box == (20, 10, 23, 13)
    field = receptive_box(net, "3", (11, 21), (3, 32, 32))
    assert field == (19, 9, 24, 14)
    widened = patch_box(net, x, "3", 0, (11, 21), "activation", min_side=8)
    assert widened == (18, 8, 26, 16) and widened[2] - widened[0] == 8
    # near the border the widened box moves inside the image instead of shrinking
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, 0, 0] = 1.0
    assert patch_box(net, x, "3", 0, (0, 0), "activation", min_side=8) == (0, 0, 8, 8)


def test_patch_boxes_of_a_dead_neuron_fall_back_to_its_receptive_field():
    net = _bright_square_model()
    x = torch.zeros(1, 3, 32, 32)
    (patch,) = patch_boxes(net, x, "3", [(1, (5, 5), "relevance")], min_side=1)
    assert patch.box == patch.receptive == (3, 3, 8, 8)
    assert float(patch.map.abs().sum()) == 0.0


def test_patch_box_refuses_a_bad_mode_and_channel():
    net = _bright_square_model()
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(PatchError, match="mode must be one of relevance, activation"):
        patch_box(net, x, "3", 0, (1, 1), "gradient")
    with pytest.raises(PatchError, match=r"channel 5 does not exist: layer '3' has 2 channels"):
        patch_box(net, x, "3", 5, (1, 1))


def test_crop_patch_cuts_the_full_size_photo_where_the_input_lay():
    clf = Classifier(_bright_square_model(), input_size=32, device="cpu")
    assert isinstance(clf.preprocessing, Preprocessing)
    photo = Image.new("RGB", (256, 128), (0, 0, 0))
    photo.paste((255, 0, 0), (160, 40, 184, 64))  # 24x24 square at 8x the input's scale
    _, geometry = Preprocessing(input_size=(32, 32), resize="squash").resize_image(photo)
    assert geometry.box == (0.0, 0.0, 256.0, 128.0)  # squash: the whole photo, 8x by 4x
    crop = crop_patch(photo, geometry, (20, 10, 23, 16), (32, 32))
    assert crop.size == (24, 24)
    assert crop.getpixel((0, 0)) == (255, 0, 0) and crop.getpixel((23, 23)) == (255, 0, 0)
