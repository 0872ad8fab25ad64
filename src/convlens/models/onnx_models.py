"""ONNX model files (``.onnx``) converted to an eager torch module, so every method applies.

An ONNX file is a computation graph with its weights (exported from PyTorch, Keras via
``tf2onnx``, scikit-learn, ...). We convert it with onnx2torch (an optional extra: ``pip
install 'convlens[onnx]'``), which builds a ``torch.fx.GraphModule`` of ordinary modules
(``Conv2d``, ``ReLU``, ``Linear``...): hooks, CAM layers (named after the ONNX nodes, e.g.
``"features/features/6/Relu"``), modified backward rules and LRP then work as on any eager
model (docs/architecture.md, "Models").

Why ``trust_model=True`` is required: the converter generates and runs Python code (the
GraphModule's ``forward``) from the graph in the file, and the graph may point at external
data files next to it; the file defines the computation that will run, like a TorchScript
archive. A file you did not make is a program you did not write.

Layout: convlens feeds ``(N, C, H, W)``. A graph whose input is channels-last (``(N, H, W,
C)``, the Keras default) is refused with the fix (``tf2onnx --inputs-as-nchw``). A graph
with a static input size sets the default ``input_size``; mean and std are not part of an
ONNX file and default to ImageNet's (pass ``mean=``/``std=``).

Before conversion, ``Identity`` nodes that only rename a weight are folded into a weight of
their own (:func:`fold_identity_initializers`): PyTorch's TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``) keeps one copy of identical tensors, e.g. the
all-zero biases of a freshly initialised network, and reaches the others through
``Identity`` nodes, which onnx2torch's ``Conv`` converter cannot follow (a raw
``KeyError``). Any other failure of the converter is one :class:`ModelLoadError` naming the
file, the node and its operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from convlens.errors import ModelLoadError, UnsafeCheckpointError


def fold_identity_initializers(model: Any) -> int:
    """Replace each ``Identity`` of a weight (initializer) by a copy of that weight.

    The copy is named after the node's output, so the consumers (``Conv`` biases...) find a
    weight under the name they use; chains of ``Identity`` fold one after another (nodes are
    topologically sorted). Graph outputs are left alone. Modifies ``model`` in place.

    Returns:
        How many nodes were folded.
    """
    import onnx

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    folded = []
    for node in graph.node:
        if (node.op_type == "Identity" and node.domain in ("", "ai.onnx")
                and len(node.input) == 1 and node.input[0] in weights
                and len(node.output) == 1 and node.output[0] not in outputs
                and node.output[0] not in weights):
            copy = onnx.TensorProto()
            copy.CopyFrom(weights[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            weights[copy.name] = copy
            folded.append(node)
    for node in folded:
        graph.node.remove(node)
    return len(folded)


def _failing_node(error: BaseException) -> str:
    """``node 'NAME' (OP)`` of the node onnx2torch was converting when ``error`` arose.

    onnx2torch's ``convert`` loops over the graph's nodes with the current one in its local
    ``onnx_node``; the traceback's frames still hold it. Empty when the failure came from
    elsewhere (shape inference, code generation)."""
    traceback = error.__traceback__
    node = None
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "convert" and "onnx2torch" in frame.f_code.co_filename:
            node = frame.f_locals.get("onnx_node", node)
        traceback = traceback.tb_next
    op = getattr(node, "operation_type", None)
    name = getattr(node, "name", None) or getattr(node, "unique_name", None)
    return f"node {name!r} ({op})" if name and op else ""


def _input_shape(model: Any) -> list[int | str | None]:
    """The first graph input's shape: ints for static dims, names or None for dynamic ones."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        return []
    dims = inputs[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def _layout_options(path: Path, shape: list[int | str | None]) -> dict[str, Any]:
    """Default ``input_size`` from a static NCHW input; NHWC refused with the fix."""
    if len(shape) != 4:
        return {}
    _, c, h, w = shape
    if isinstance(w, int) and w in (1, 3, 4) and not (isinstance(c, int) and c in (1, 3, 4)):
        raise ModelLoadError(
            f"{path}: the graph's input is channels-last {tuple(shape)} (N, H, W, C), as Keras "
            "exports it; convlens feeds (N, C, H, W). Re-export with the input transposed: "
            "python -m tf2onnx.convert ... --inputs-as-nchw INPUT_NAME (or torch.onnx.export "
            "of an NCHW model)")
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        return {"input_size": (h, w)}
    return {}


def load_onnx(path: str | Path, *, weights: str | Path | None = None,
              trust_model: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Convert an ``.onnx`` file to a torch module with onnx2torch.

    Returns:
        The converted module and default preprocessing options (``input_size`` when the
        graph's input size is static).

    Raises:
        UnsafeCheckpointError: without ``trust_model`` (see the module docstring).
        ModelLoadError: onnx/onnx2torch missing, an invalid file, a channels-last input,
            an operator the converter does not support, or any other failure of the
            converter (named by node and operator).
    """
    path = Path(path)
    if weights is not None:
        raise ModelLoadError(f"{path} is an ONNX model, which holds its own weights; weights= "
                             "(CLI: --weights) applies to a factory, torchvision:NAME or "
                             "timm:NAME only")
    if not trust_model:
        raise UnsafeCheckpointError(
            f"{path} is an ONNX graph: converting it builds and runs Python modules generated "
            "from the graph (onnx2torch), so the file defines the computation that will run. "
            "Pass trust_model=True (CLI: --trust-model) if you trust its source")
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:
        raise ModelLoadError("ONNX models need onnx and onnx2torch: pip install "
                             "'convlens[onnx]'") from None
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as error:  # onnx raises DecodeError, ValidationError, OSError...
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(f"{path}: not a valid ONNX model ({first[:200]})") from None
    options = _layout_options(path, _input_shape(model))
    fold_identity_initializers(model)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default="?")
    try:
        module = convert(model)
    except NotImplementedError as error:
        raise ModelLoadError(
            f"{path}: onnx2torch cannot convert this graph ({error}; the file uses opset "
            f"{opset}). Re-export with an older opset (torch.onnx.export(..., "
            "opset_version=17); tf2onnx --opset 17), or load the architecture in Python "
            "(package.module:factory with weights=)") from None
    except Exception as error:  # the converter's own failures: KeyError, ValueError...
        where = _failing_node(error) or "the graph"
        detail = (str(error).splitlines() or [""])[0][:200]
        raise ModelLoadError(
            f"{path}: onnx2torch failed on {where} with {type(error).__name__}: {detail} "
            f"(opset {opset}). Re-export it at opset 17 (torch.onnx.export(..., "
            "opset_version=17); tf2onnx --opset 17) or simplify it (python -m onnxsim IN OUT), "
            "or load the architecture in Python (package.module:factory with weights=)"
        ) from None
    return module, options
