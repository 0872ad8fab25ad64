"""Reading weights files safely: what a file really is, a state dict out of it, loaded strictly.

The safety policy is :mod:`convlens.models.loading`'s (safetensors or
``torch.load(weights_only=True)``; arbitrary unpickling only with ``trust_model=True``). These
functions live in their own module so that the model sources (``loading.py``,
``timm_models.py``) both import them and neither imports the other: docs/architecture.md,
"Layers and the direction data flows".
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.errors import ModelLoadError, UnsafeCheckpointError

_SAVE_STATE_DICT_HINT = (
    "Save only the weights instead: torch.save(model.state_dict(), 'weights.pt') or "
    "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors'), then load with "
    "load_model('package.module:factory', weights='weights.pt'). If you trust this file "
    "(it can run any code when unpickled), pass trust_model=True (CLI: --trust-model)."
)


_ACCEPTED_WEIGHTS = ("expected a state dict: .safetensors, or a torch.save-d "
                     "model.state_dict() (.pt/.pth)")


def sniff_file(path: Path) -> str:
    """What a file really is, from its first bytes (its name is not trusted).

    Messages name the file and this kind, never its content: a ``.env`` or a key file
    given by mistake must not end up in a terminal or a CI log.

    Returns one of ``"folder"``, ``"missing"``, ``"empty"``, ``"safetensors"`` (an 8-byte
    little-endian header length followed by a JSON header), ``"torchscript"`` and ``"zip"``
    (``torch.save``'s archive format; TorchScript archives hold a ``code/`` folder),
    ``"pickle"`` (protocol 2+ magic: legacy ``torch.save`` files), ``"image"``, ``"text"``
    (valid UTF-8 without control characters) or ``"binary"`` (anything else).
    """
    if path.is_dir():
        return "folder"
    if not path.is_file():
        return "missing"
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return "missing"
    if not head:
        return "empty"
    if len(head) >= 9:
        length = int.from_bytes(head[:8], "little")
        if 1 < length < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torchscript" if _is_torchscript(path) else "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF")):
        return "image"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the 4096th byte is still text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return "binary"
    if all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return "text"
    return "binary"


_FOUND = {
    "folder": "is a folder, not a file",
    "empty": "is empty (0 bytes)",
    "text": "is a text file",
    "image": "is an image",
    "binary": "is not a recognised weights format (neither safetensors nor a PyTorch file)",
    "torchscript": "is a TorchScript program (a whole model), not a state dict",
}


def read_state_dict(path: str | Path, *, trust_model: bool = False) -> dict[str, torch.Tensor]:
    """Weights from ``.safetensors`` or a ``torch.save``-d state dict (read safely)."""
    path = Path(path)
    kind = sniff_file(path)
    if kind == "missing":
        raise ModelLoadError(f"weights file not found: {path}; {_ACCEPTED_WEIGHTS}")
    if kind == "torchscript":
        raise ModelLoadError(f"{path} {_FOUND[kind]}: give it as the model (CLI: --model "
                             f"{path} --trust-model), without weights")
    if kind in _FOUND:  # named by kind only: never a byte of it (a .env, a key file) in a log
        raise ModelLoadError(f"{path} {_FOUND[kind]}, not weights; {_ACCEPTED_WEIGHTS}")
    if kind == "safetensors" or path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise ModelLoadError(
                f"{path}: not a valid safetensors file (safetensors cannot read its header, "
                f"{type(error).__name__}); {_ACCEPTED_WEIGHTS}") from None
    state = _torch_load(path, trust_model=trust_model)
    if isinstance(state, nn.Module):
        return state.state_dict()
    if isinstance(state, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return {k.removeprefix("module."): v for k, v in tensors.items()}
    raise ModelLoadError(f"{path}: no tensors found; expected a state dict (name -> tensor)")


def _torch_load(path: Path, *, trust_model: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_model:
            raise UnsafeCheckpointError(
                f"{path} is not a plain state dict: loading it would unpickle arbitrary Python "
                f"objects ({_plain(error)}). {_SAVE_STATE_DICT_HINT}"
            ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile):
        # torch's text here quotes the file (names inside a ZIP, a pickle's bytes): the
        # kind is named instead (see sniff_file)
        kind = {"zip": "a ZIP archive", "pickle": "a Python pickle"}.get(
            sniff_file(path), "not a recognised weights format")
        raise ModelLoadError(f"{path} is {kind} that torch.load cannot read (not a torch.save "
                             f"file, or a damaged one); {_ACCEPTED_WEIGHTS}") from None
    return torch.load(path, map_location="cpu", weights_only=False)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


def _plain(error: BaseException, limit: int = 160) -> str:
    """The first line of a library's exception text without terminal escapes.

    torch's weights-only refusal, for one, wraps words in ANSI bold codes, which would reach
    a log file or a pipe as raw escape characters.
    """
    lines = _ANSI.sub("", str(error)).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist())


def load_weights(module: nn.Module, path: str | Path, *, trust_model: bool = False) -> nn.Module:
    """Load a state dict into ``module`` strictly, listing mismatched keys on failure."""
    state = read_state_dict(path, trust_model=trust_model)
    missing, unexpected = [], []
    try:
        result = module.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except RuntimeError as error:  # shape mismatches
        raise ModelLoadError(f"{path} does not fit the architecture: "
                             f"{str(error).splitlines()[1:3]}") from None
    if missing or unexpected:
        raise ModelLoadError(
            f"{path} does not fit the architecture: missing keys {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    return module
