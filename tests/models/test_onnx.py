"""ONNX files: converted with onnx2torch behind trust_model; maps equal the original's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from cli_support import assert_one_error, photo, run
from tiny_models import TinyResNet, TinyVGG, seeded

import convlens as cl
from convlens.errors import ModelLoadError, UnsafeCheckpointError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")


def _export(model: torch.nn.Module, path, size: int = 16, opset: int = 17,
            dynamic: bool = True) -> None:
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}} if dynamic else None)


@pytest.mark.parametrize("build", [TinyVGG, TinyResNet])
def test_converted_model_gives_the_original_maps(tmp_path, build, snapshot):
    original = seeded(build(), dtype=torch.float32).eval()
    path = tmp_path / "model.onnx"
    _export(original, path)
    clf = cl.load_model(path, trust_model=True, device="cpu", labels=None)
    assert clf.preprocessing.input_size == (16, 16)  # from the graph's static input size
    converted = clf.module
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(converted(x), original(x), rtol=1e-5, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")  # the file itself, run by its reference runtime
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(converted(x), torch.from_numpy(reference), rtol=1e-5,
                                   atol=1e-5)
    layer = cl.layers(clf)
    conv_layers = [info.name for info in layer if info.type == "Conv2d"]
    assert conv_layers  # named after the ONNX nodes
    snap = snapshot(converted)
    # the default CAM layer (last spatial output) is the same feature map in both models
    for method in ("gradcam", "layercam", "saliency", "integrated_gradients",
                   "guided_backprop", "lrp_epsilon"):
        got = cl.attribute(clf, x, method, target=1, **({"steps": 8} if method ==
                                                         "integrated_gradients" else {}))
        expected = cl.attribute(original, x, method, target=1, **(
            {"steps": 8} if method == "integrated_gradients" else {}))
        assert got.shape == expected.shape
        scale = float(expected.abs().max())
        assert scale > 0, method
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale, msg=method)
    snap.assert_unchanged()


def test_onnx_needs_trust_model_and_says_why(tmp_path):
    path = tmp_path / "model.onnx"
    _export(seeded(TinyVGG(), dtype=torch.float32).eval(), path)
    with pytest.raises(UnsafeCheckpointError, match="builds and runs Python modules"):
        cl.load_model(path)
    with pytest.raises(ModelLoadError, match="holds its own weights"):
        cl.load_model(path, weights=path, trust_model=True)


def test_bad_onnx_files_get_one_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \x00\x01")
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        cl.load_model(bad, trust_model=True)
    # a channels-last (Keras-style) input is refused with the tf2onnx fix
    nhwc = tmp_path / "nhwc.onnx"

    class ChannelsLast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = seeded(TinyVGG(), dtype=torch.float32)

        def forward(self, x):
            return self.inner(x.permute(0, 3, 1, 2))

    x = torch.randn(1, 16, 16, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ChannelsLast().eval(), (x,), str(nhwc), dynamo=False,
                          opset_version=17)
    with pytest.raises(ModelLoadError, match="inputs-as-nchw"):
        cl.load_model(nhwc, trust_model=True)


class _ZeroBiasNet(torch.nn.Module):
    """Freshly initialised convs whose biases are all zero, hence identical: the TorchScript
    exporter stores one and reaches the others through Identity nodes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.ReLU())
        for layer in self.features:
            if isinstance(layer, torch.nn.Conv2d):
                torch.nn.init.zeros_(layer.bias)
        self.head = torch.nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def test_graph_with_identity_of_shared_biases_loads_and_explains(tmp_path):
    """Issue 9.13: onnx2torch failed with a raw KeyError on biases behind Identity nodes."""
    original = _ZeroBiasNet().eval()
    path = tmp_path / "fresh.onnx"
    _export(original, path, dynamic=False)
    graph = onnx.load(str(path)).graph
    assert [n.op_type for n in graph.node].count("Identity") == 2  # the exporter's sharing
    clf = cl.load_model(path, trust_model=True, device="cpu")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(clf.module(x), original(x), rtol=1e-5, atol=1e-5)
    for method in ("gradcam", "saliency", "lrp_epsilon"):
        got = cl.attribute(clf, x, method, target=1)
        expected = cl.attribute(original, x, method, target=1)
        scale = float(expected.abs().max())
        assert scale > 0, method
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale, msg=method)
    # and through the CLI, the way the issue met it
    result = run("predict", str(photo(tmp_path / "p.png")), "--model", str(path),
                 "--trust-model", "--device", "cpu", "--input-size", "16")
    assert result.returncode == 0, result.stderr
    assert "class 1" in result.stdout


def test_any_converter_failure_is_one_line_naming_the_node(tmp_path):
    """A Conv whose bias is computed (not a weight) makes onnx2torch raise a KeyError."""
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w"),
               numpy_helper.from_array(np.zeros(2, np.float32), "b1"),
               numpy_helper.from_array(np.ones(2, np.float32), "b2")]
    nodes = [helper.make_node("Add", ["b1", "b2"], ["bias"], name="make_bias"),
             helper.make_node("Conv", ["x", "w", "bias"], ["y"], name="conv_with_computed_bias",
                              pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["y"], ["logits"], name="pool", axes=[2, 3],
                              keepdims=0)]
    graph = helper.make_graph(
        nodes, "computed_bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])], weights)
    path = tmp_path / "computed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelLoadError, match=r"node 'conv_with_computed_bias' \(Conv\)"
                       r" with KeyError.*opset 17"):
        cl.load_model(path, trust_model=True, device="cpu")
    result = run("predict", str(photo(tmp_path / "p.png")), "--model", str(path),
                 "--trust-model", "--device", "cpu")
    assert_one_error(result, 2, "computed.onnx", "conv_with_computed_bias", "Conv", "KeyError",
                     "Re-export")
