"""load_model: every way in, the safety policy, labels and preprocessing options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import TinyVGG, seeded

import convlens as cl
from convlens.errors import ModelLoadError, UnsafeCheckpointError

FACTORY = f"{Path(__file__).parents[1] / 'fixtures' / 'tiny_model.py'}:build"


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _reference() -> torch.nn.Module:
    model = seeded(TinyVGG(classes=4), seed=7, dtype=torch.float32)
    return model


def _same_outputs(classifier: cl.Classifier, reference: torch.nn.Module) -> None:
    with torch.no_grad():
        torch.testing.assert_close(classifier.logits(_x()), reference(_x()))


def test_factory_with_safetensors_weights(tmp_path: Path) -> None:
    reference = _reference()
    save_file(reference.state_dict(), tmp_path / "w.safetensors")
    clf = cl.load_model(FACTORY, weights=tmp_path / "w.safetensors", device="cpu")
    _same_outputs(clf, reference)


def test_factory_with_a_torch_state_dict_and_a_wrapped_checkpoint(tmp_path: Path) -> None:
    reference = _reference()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in
                                            reference.state_dict().items()}}, tmp_path / "c.pt")
    clf = cl.load_model(FACTORY, weights=tmp_path / "c.pt", device="cpu")
    _same_outputs(clf, reference)


def test_weights_that_do_not_fit_list_the_keys(tmp_path: Path) -> None:
    save_file({"features.0.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "w.safetensors")
    with pytest.raises(ModelLoadError, match="missing keys"):
        cl.load_model(FACTORY, weights=tmp_path / "w.safetensors", device="cpu")


def test_torchscript_needs_trust_and_then_works(tmp_path: Path) -> None:
    reference = _reference()
    torch.jit.script(reference).save(str(tmp_path / "m.pt"))
    with pytest.raises(UnsafeCheckpointError, match="trust_model=True"):
        cl.load_model(tmp_path / "m.pt", device="cpu")
    clf = cl.load_model(tmp_path / "m.pt", device="cpu", trust_model=True)
    _same_outputs(clf, reference)
    attributions = cl.attribute(clf, _x(), "saliency")  # pixel methods need no hooks
    assert attributions.abs().sum() > 0


def test_torch_export_archive(tmp_path: Path) -> None:
    reference = _reference()
    program = torch.export.export(reference, (_x(),))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    with pytest.raises(UnsafeCheckpointError):
        cl.load_model(tmp_path / "m.pt2", device="cpu")
    clf = cl.load_model(tmp_path / "m.pt2", device="cpu", trust_model=True)
    _same_outputs(clf, reference)


def test_pickled_module_is_refused_without_trust(tmp_path: Path) -> None:
    torch.save(_reference(), tmp_path / "whole.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"state_dict\(\).*trust_model=True"):
        cl.load_model(tmp_path / "whole.pt", device="cpu")
    clf = cl.load_model(tmp_path / "whole.pt", device="cpu", trust_model=True)
    _same_outputs(clf, _reference())


def test_a_bare_state_dict_file_asks_for_the_architecture(tmp_path: Path) -> None:
    torch.save(_reference().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ModelLoadError, match="weights only.*package.module:factory"):
        cl.load_model(tmp_path / "sd.pt", device="cpu")


def test_torchvision_name_with_local_weights(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    save_file(reference.state_dict(), tmp_path / "r18.safetensors")
    with pytest.raises(ModelLoadError, match="local weights file"):
        cl.load_model("torchvision:resnet18", device="cpu")
    with pytest.raises(ModelLoadError, match="does not fit"):
        cl.load_model("torchvision:resnet18", weights=tmp_path / "r18.safetensors",
                      device="cpu")  # 1000-class architecture, 10-class weights


@pytest.mark.parametrize("content,suffix,expected", [
    ("ant\nbee\n\ncat\n", ".txt", ["ant", "bee", "cat"]),
    (json.dumps(["ant", "bee"]), ".json", ["ant", "bee"]),
    (json.dumps({"1": "bee", "0": "ant"}), ".json", ["ant", "bee"]),
    (json.dumps({"0": ["n01", "ant"], "1": ["n02", "bee"]}), ".json", ["ant", "bee"]),
])
def test_label_files(tmp_path: Path, content: str, suffix: str, expected: list[str]) -> None:
    path = tmp_path / f"labels{suffix}"
    path.write_text(content)
    assert cl.models.loading.read_labels(path) == expected


def test_label_count_must_match_the_outputs(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("a\nb\n")
    # refused when loading (one line naming the file), not at the first prediction
    with pytest.raises(ModelLoadError, match=r"2 labels in .*l\.txt but the model has 4 outputs"):
        cl.load_model(FACTORY, labels=tmp_path / "l.txt", device="cpu", input_size=32)
    clf = cl.load_model(FACTORY, device="cpu", input_size=32)
    clf.labels = ["a", "b"]  # set afterwards: still caught at prediction time
    with pytest.raises(ModelLoadError, match="4 outputs but 2 labels"):
        clf.predict(torch.zeros(1, 3, 32, 32))


def test_preprocessing_options_are_applied() -> None:
    clf = cl.load_model(FACTORY, input_size=40, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                        resize="squash", device="cpu")
    pre = clf.preprocessing
    assert pre.input_size == (40, 40) and pre.resize == "squash" and pre.mean == (0.5,) * 3
    from PIL import Image

    x = clf.preprocess(Image.new("RGB", (10, 20), (255, 128, 0)))
    assert x.shape == (1, 3, 40, 40)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([2.0, 0.0078, -2.0]), atol=1e-3,
                               rtol=0)


def test_unknown_model_spec_says_what_is_accepted() -> None:
    with pytest.raises(ModelLoadError, match="bundled name.*TorchScript.*factory.*torchvision"):
        cl.load_model("resnet9000", device="cpu")
    with pytest.raises(ModelLoadError, match="cannot import"):
        cl.load_model("no_such_package.models:build", device="cpu")


def test_classifier_wraps_a_module_in_memory_without_changing_its_mode() -> None:
    module = _reference().train()
    clf = cl.Classifier(module, labels=list("abcd"), input_size=32, device="cpu")
    assert clf.predict(torch.zeros(1, 3, 32, 32), top=2)[0][0][0] in "abcd"
    assert module.training


def test_bundled_model_labels_and_preprocessing() -> None:
    clf = cl.load_model(device="cpu")
    assert len(clf.labels) == 1000 and clf.labels[281] == "tabby"
    assert clf.preprocessing.input_size == (224, 224)


# --- which option applies to which model source -------------------------------------------


def test_weights_and_trust_are_refused_where_they_cannot_apply(tmp_path: Path) -> None:
    save_file(_reference().state_dict(), tmp_path / "w.safetensors")
    weights = tmp_path / "w.safetensors"
    # the bundled model ships its weights: refused before anything is loaded
    with pytest.raises(ModelLoadError, match=r"weights=.*cannot apply.*bundled"):
        cl.load_model("efficientnet_lite0", weights=weights, device="cpu")
    with pytest.raises(ModelLoadError, match=r"trust_model.*cannot apply.*bundled"):
        cl.load_model("efficientnet_lite0", trust_model=True, device="cpu")
    # a user's module is used as it is (never modified)
    module = _reference()
    with pytest.raises(ModelLoadError, match="load_state_dict"):
        cl.load_model(module, weights=weights, device="cpu")
    with pytest.raises(ModelLoadError, match="trust_model.*cannot apply"):
        cl.load_model(module, trust_model=True, device="cpu")
    # a factory without weights, or with safetensors weights, loads nothing to trust
    with pytest.raises(ModelLoadError, match="no weights file is given"):
        cl.load_model(FACTORY, trust_model=True, device="cpu")
    with pytest.raises(ModelLoadError, match="safetensors file.*never runs code"):
        cl.load_model(FACTORY, weights=weights, trust_model=True, device="cpu")
    with pytest.raises(ModelLoadError, match="no weights file is given"):
        cl.load_model("torchvision:resnet18", trust_model=True, device="cpu")
    # a model file holds its weights
    torch.jit.script(_reference()).save(str(tmp_path / "m.pt"))
    with pytest.raises(ModelLoadError, match="holds its own weights"):
        cl.load_model(tmp_path / "m.pt", weights=weights, trust_model=True, device="cpu")


def test_trust_with_pickle_weights_for_a_factory_still_works(tmp_path: Path) -> None:
    reference = _reference()
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    _same_outputs(cl.load_model(FACTORY, weights=tmp_path / "w.pt", trust_model=True,
                                device="cpu"), reference)


# --- what a weights file really is -----------------------------------------------------------


def test_a_text_file_as_weights_is_called_text_not_a_pickle(tmp_path: Path) -> None:
    notes = tmp_path / "notes.pt"
    notes.write_text("these are my notes\nsecond line\n")
    with pytest.raises(ModelLoadError) as info:
        cl.load_model(FACTORY, weights=notes, device="cpu")
    message = str(info.value)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert "is a text file, not weights" in message
    assert "my notes" not in message  # its content is never quoted
    assert ".safetensors" in message and "state_dict" in message
    assert "trust" not in message and "unpickle" not in message


@pytest.mark.parametrize("kind,needle", [
    ("folder", "is a folder"), ("empty", "is empty"), ("image", "is an image"),
    ("binary", "not a recognised weights format"), ("torchscript", "--model"),
    ("missing", "not found"),
])
def test_other_non_weights_files_say_what_they_are(tmp_path: Path, kind: str, needle: str) -> None:
    path = tmp_path / "w.pt"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "image":
        from PIL import Image

        Image.new("RGB", (4, 4)).save(path, format="PNG")
    elif kind == "binary":
        path.write_bytes(bytes(range(1, 32)) * 10)
    elif kind == "torchscript":
        torch.jit.script(_reference()).save(str(path))
    with pytest.raises(ModelLoadError, match=needle) as info:
        cl.load_model(FACTORY, weights=path, device="cpu")
    assert "\n" not in str(info.value)


def test_safetensors_content_is_recognised_whatever_the_name(tmp_path: Path) -> None:
    reference = _reference()
    save_file(reference.state_dict(), tmp_path / "weights.bin")
    _same_outputs(cl.load_model(FACTORY, weights=tmp_path / "weights.bin", device="cpu"),
                  reference)


def test_a_text_file_as_model_is_called_text(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("ant\nbee\n")
    with pytest.raises(ModelLoadError, match=r"is a text file; .*TorchScript \.pt") as info:
        cl.load_model(labels, device="cpu")
    assert not isinstance(info.value, UnsafeCheckpointError)
    with pytest.raises(ModelLoadError, match="is a folder"):
        cl.load_model(tmp_path, device="cpu")


def test_library_messages_carry_no_terminal_escapes(tmp_path: Path) -> None:
    # torch's weights-only refusal wraps words in ANSI bold codes (\x1b[1m ... \x1b[0m)
    torch.save(_reference(), tmp_path / "whole.pt")
    with pytest.raises(UnsafeCheckpointError) as info:
        cl.load_model(FACTORY, weights=tmp_path / "whole.pt", device="cpu")
    assert "\x1b" not in str(info.value)
    assert "Weights only load failed" in str(info.value)


def test_a_factory_file_may_define_dataclasses(tmp_path) -> None:
    """A ``file.py:factory`` module runs registered in sys.modules, as dataclasses need."""
    factory = tmp_path / "dc_model.py"
    factory.write_text(
        "from dataclasses import dataclass\n"
        "import torch.nn as nn\n"
        "@dataclass\n"
        "class Settings:\n"
        "    width: int = 4\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, Settings().width, 3), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(4, 2))\n")
    from convlens.models.loading import load_model

    clf = load_model(f"{factory}:build", input_size=16, device="cpu")
    assert clf.predict([__import__("numpy").zeros((16, 16, 3), "uint8")], top=1)


@pytest.mark.parametrize("size,needle", [
    (60000, "above the limit of 64,000,000"), ((8001, 8000), "above the limit"),
    (True, "positive int"), ("12", "positive int"), ((2.5, 3), "positive int"),
    (float("inf"), "positive int"),
])
def test_input_sizes_are_bounded_by_the_photo_pixel_cap(size: object, needle: str) -> None:
    with pytest.raises(ModelLoadError, match=needle):
        cl.load_model(FACTORY, input_size=size, device="cpu")
    with pytest.raises(ModelLoadError, match=needle):
        cl.Classifier(_reference(), input_size=size)


@pytest.mark.parametrize("mean,std", [((0.5,) * 3, (float("nan"), 1, 1)),
                                      ((float("inf"), 0, 0), (1, 1, 1))])
def test_non_finite_normalisation_is_refused(mean, std) -> None:
    # a NaN std turned every probability into nan, silently
    with pytest.raises(ModelLoadError, match="one finite value per channel"):
        cl.Classifier(_reference(), mean=mean, std=std)
