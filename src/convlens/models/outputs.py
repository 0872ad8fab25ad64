"""What a model returned: choosing the tensor to explain, and saying why a model failed.

Models may return a tensor, a tuple/list or a dict of them (``ModelOutput``-like mappings,
named tuples); :func:`select_output` picks the one to explain. Both the Classifier and the
attribution core use these, so they live with the models (docs/architecture.md, "Layers").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from convlens.errors import InputShapeError, UnsupportedModelError

OutputKey = None | int | str
"""Which output to explain: ``None`` (the tensor, or the first tensor), an index or a key."""


def select_output(out: Any, output: OutputKey = None) -> torch.Tensor:
    """The tensor to explain among a model's outputs.

    Args:
        out: What ``model(x)`` returned: a tensor, a tuple/list, or a dict (also
            ``ModelOutput``-like mappings and named tuples).
        output: ``None`` = the tensor itself, or the first tensor of a tuple/list/dict
            (insertion order); an int = that position; a str = that key or attribute.

    Raises:
        UnsupportedModelError: when nothing selected is a tensor, naming what there is.
    """
    if isinstance(out, torch.Tensor) and output is None:
        return out
    if isinstance(out, Mapping):
        keys = list(out)
        if output is None:
            chosen = next((out[k] for k in keys if isinstance(out[k], torch.Tensor)), None)
        elif output in out:
            chosen = out[output]
        else:
            raise UnsupportedModelError(
                f"the model's output has no key {output!r}; its keys are {keys}; pass "
                "output= one of them")
    elif isinstance(out, (tuple, list)):
        if output is None:
            chosen = next((item for item in out if isinstance(item, torch.Tensor)), None)
        elif isinstance(output, int) and not isinstance(output, bool) and \
                -len(out) <= output < len(out):
            chosen = out[output]
        elif isinstance(output, str) and hasattr(out, output):  # named tuple
            chosen = getattr(out, output)
        else:
            raise UnsupportedModelError(
                f"output={output!r} does not select one of the model's {len(out)} outputs; "
                f"pass an index 0..{len(out) - 1}")
    else:
        raise UnsupportedModelError(
            f"the model returned a {type(out).__name__}; convlens explains a tensor, a "
            "tuple/list or a dict of tensors (choose one with output=)")
    if not isinstance(chosen, torch.Tensor):
        raise UnsupportedModelError(
            f"the selected model output is a {type(chosen).__name__}, not a tensor; choose "
            "a tensor output with output= (an index or a key)")
    return chosen


def model_failure(inputs: torch.Tensor, error: Exception) -> InputShapeError:
    """The error for a model that failed on ``inputs``, with a hint for channel mismatches."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    hint = ""
    if "channels" in text and inputs.dim() == 4 and inputs.shape[1] == 1:
        hint = ("; a 1-channel (grey) input to a 3-channel model: repeat the channel, "
                "x.repeat(1, 3, 1, 1), or preprocess the photo with Classifier.preprocess")
    return InputShapeError(
        f"the model failed on an input of shape {tuple(inputs.shape)} "
        f"({inputs.dtype}, {inputs.device}): {text}{hint}")
