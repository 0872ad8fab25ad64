"""timm:NAME models: local weights only, nothing downloaded, the model's own preprocessing."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch

import convlens as cl
from convlens.errors import ModelLoadError

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _save(model: torch.nn.Module, path) -> None:
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(path))


def test_timm_model_loads_local_weights_with_its_own_preprocessing(tmp_path, no_network):
    torch.manual_seed(0)
    original = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    weights = tmp_path / "resnet10t.safetensors"
    _save(original, weights)
    env_before = os.environ.get("HF_HUB_OFFLINE")
    clf = cl.load_model("timm:resnet10t", weights=weights, labels=["a", "b", "c"],
                        device="cpu")
    assert os.environ.get("HF_HUB_OFFLINE") == env_before  # restored after the call
    config = timm.data.resolve_data_config({}, model=original)
    pre = clf.preprocessing
    assert pre.input_size == tuple(config["input_size"][1:]) == (176, 176)
    assert pre.resize == "center_crop"
    assert pre.resize_size == math.floor(176 / config["crop_pct"]) == 201
    assert pre.mean == pytest.approx(config["mean"]) and pre.std == pytest.approx(config["std"])
    assert pre.interpolation == config["interpolation"] == "bicubic"
    x = torch.randn(2, 3, 176, 176)
    with torch.no_grad():
        torch.testing.assert_close(clf.logits(x), original(x))
    # a fine-tuned head (3 classes, not 1000) was recognised from the state dict
    assert clf.module.num_classes == 3 and clf.labels == ["a", "b", "c"]
    maps = cl.attribute(clf, x, "gradcam", target=1, relu=False)
    assert maps.shape == (2, 1, 6, 6) and float(maps.abs().max()) > 0
    torch.testing.assert_close(maps, cl.attribute(original, x, "gradcam", target=1,
                                                  relu=False))


def test_overrides_win_over_the_model_configuration(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "w.safetensors"
    _save(timm.create_model("resnet10t", pretrained=False, num_classes=2), weights)
    clf = cl.load_model("timm:resnet10t", weights=weights, input_size=64, mean=(0, 0, 0),
                        std=(1, 1, 1), device="cpu")
    assert clf.preprocessing.input_size == (64, 64)
    assert clf.preprocessing.mean == (0, 0, 0)
    assert clf.preprocessing.interpolation == "bicubic"  # not overridden: the model's own


def test_timm_vit_is_explained_on_its_token_grid(tmp_path, no_network):
    torch.manual_seed(0)
    original = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4,
                                 depth=2).eval()
    weights = tmp_path / "vit.safetensors"
    _save(original, weights)
    # depth is not part of the name: a 12-block model does not fit 2 blocks of weights
    with pytest.raises(ModelLoadError, match="does not fit"):
        cl.load_model("timm:vit_tiny_patch16_224", weights=weights, device="cpu")
    full = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4).eval()
    _save(full, weights)
    clf = cl.load_model("timm:vit_tiny_patch16_224", weights=weights, device="cpu")
    assert clf.preprocessing.mean == (0.5, 0.5, 0.5)
    assert clf.preprocessing.resize_size == math.floor(224 / 0.9)
    x = torch.randn(1, 3, 224, 224)
    maps = cl.attribute(clf, x, "gradcam", layer="blocks.11.norm1")
    assert maps.shape == (1, 1, 14, 14)


def test_timm_refuses_downloads_and_unknown_names(tmp_path):
    with pytest.raises(ModelLoadError, match="never downloads"):
        cl.load_model("timm:resnet10t")
    with pytest.raises(ModelLoadError, match="Hugging Face Hub"):
        cl.load_model("timm:hf-hub:timm/resnet10t.c3_in1k", weights=tmp_path / "w.pt")
    weights = tmp_path / "w.safetensors"
    safetensors_torch.save_file({"x": torch.zeros(1)}, str(weights))
    with pytest.raises(ModelLoadError, match="unknown timm model 'resnet10tt'.*resnet10t"):
        cl.load_model("timm:resnet10tt", weights=weights)


def test_lrp_on_a_timm_vit_says_there_is_no_rule_for_attention():
    import convlens as cl
    from convlens.errors import UnsupportedModelError

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              depth=2, num_classes=3).eval()
    with pytest.raises(UnsupportedModelError, match="LRP has no rule for attention") as info:
        cl.attribute(model, torch.rand(1, 3, 32, 32), "lrp")
    message = str(info.value)
    assert "'blocks.1.attn' (Attention) and 1 more" in message
    assert "layer='blocks.1.norm1'" in message
    assert "Tensor.expand" not in message and "nn.ReLU" not in message


def _noise_photo(width: int, height: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# Photos of odd sizes (wide, tall, square, one pixel thin) where rounding and truncating the
# long side, or rounding the crop offset up or to even, give different pixels.
_PHOTO_SIZES = [(451, 300), (300, 451), (333, 333), (257, 1000), (640, 427), (1, 9), (9, 1),
                (17, 203)]
# (input size, crop_pct, crop_mode, interpolation) given to timm as the model's own config
_TIMM_CONFIGS = [
    ((3, 224, 224), 0.875, "center", "bilinear"),
    ((3, 224, 224), 0.95, "center", "bicubic"),
    ((3, 176, 208), 0.9, "center", "bicubic"),
    ((3, 224, 224), 1.0, "squash", "bilinear"),
    ((3, 192, 160), 0.9, "squash", "bicubic"),
    ((3, 224, 224), 1.0, "border", "bilinear"),
    ((3, 160, 192), 0.875, "border", "lanczos"),
]


@pytest.mark.parametrize("config", _TIMM_CONFIGS,
                         ids=lambda c: f"{c[2]}-{c[1]}-{c[0][1]}x{c[0][2]}")
def test_timm_inputs_equal_timms_own_eval_transform(tmp_path, monkeypatch, config):
    """Issue 9.12: a 451x300 photo became 385 px wide under convlens and 384 under timm."""
    input_size, crop_pct, crop_mode, interpolation = config
    overlay = {"input_size": input_size, "crop_pct": crop_pct, "crop_mode": crop_mode,
               "interpolation": interpolation, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.25)}
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: create(
        *args, pretrained_cfg_overlay=overlay, **kwargs))
    weights = tmp_path / "w.safetensors"
    reference_model = timm.create_model("resnet10t", pretrained=False, num_classes=2)
    _save(reference_model, weights)
    clf = cl.load_model("timm:resnet10t", weights=weights, device="cpu")
    data_config = timm.data.resolve_data_config({}, model=reference_model)
    assert data_config["crop_mode"] == crop_mode and data_config["crop_pct"] == crop_pct
    transform = timm.data.create_transform(**data_config)
    photos = [_noise_photo(w, h, seed) for seed, (w, h) in enumerate(_PHOTO_SIZES)]
    ours = clf.preprocess(photos)
    for photo, x in zip(photos, ours):
        torch.testing.assert_close(x, transform(photo), rtol=0, atol=1e-6,
                                   msg=lambda m, p=photo: f"{p.size}: {m}")
