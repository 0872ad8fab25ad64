"""Getting a network in: the bundled zoo, model files, Python factories, torchvision names.

Safety policy (what may run code on the user's machine):

* Weights are read with ``safetensors`` or ``torch.load(weights_only=True)``. A checkpoint
  that needs arbitrary unpickling (a whole pickled ``nn.Module``) is refused with
  :class:`~convlens.errors.UnsafeCheckpointError` unless ``trust_model=True``; there is no
  silent fallback.
* TorchScript (``torch.jit.save``) and ``torch.export`` (``.pt2``) archives hold a program
  in TorchScript / ATen operators, not Python: loading them cannot run arbitrary Python
  code, but they do define the computation, so they too require ``trust_model=True``. A
  file you did not make is a program you did not write; the flag makes that a decision.
* ``"package.module:factory"`` imports Python code by name, which the user asked for
  explicitly; no flag is needed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.errors import ModelLoadError, UnsafeCheckpointError
from convlens.models.classifier import Classifier

BUNDLED = ("efficientnet_lite0",)
_SAVE_STATE_DICT_HINT = (
    "Save only the weights instead: torch.save(model.state_dict(), 'weights.pt') or "
    "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors'), then load with "
    "load_model('package.module:factory', weights='weights.pt'). If you trust this file "
    "(it can run any code when unpickled), pass trust_model=True (CLI: --trust-model)."
)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, in output order (shipped with convlens)."""
    from importlib.resources import files

    text = files("convlens.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]


def read_labels(path: str | Path) -> list[str]:
    """Class names from a text file (one per line) or JSON (list, or {index: name})."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"labels file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelLoadError(f"{path}: not valid JSON ({error})") from None
        if isinstance(data, list):
            return [str(item) for item in data]
        if isinstance(data, dict):
            try:
                items = sorted(((int(k), v) for k, v in data.items()), key=lambda kv: kv[0])
            except ValueError:
                raise ModelLoadError(f"{path}: JSON object keys must be class indices") from None
            if [k for k, _ in items] != list(range(len(items))):
                raise ModelLoadError(f"{path}: class indices must be 0..N-1 without gaps")
            # Keras-style {"0": ["n01440764", "tench"]}: keep the readable name.
            return [str(v[-1]) if isinstance(v, list) else str(v) for _, v in items]
        raise ModelLoadError(f"{path}: expected a JSON list of names or an object index->name")
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ModelLoadError(f"{path}: no labels found (expected one class name per line)")
    return labels


def read_state_dict(path: str | Path, *, trust_model: bool = False) -> dict[str, torch.Tensor]:
    """Weights from ``.safetensors`` or a ``torch.save``-d state dict (read safely)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise ModelLoadError(f"{path}: not a valid safetensors file ({error})") from None
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
                f"objects ({str(error).splitlines()[0][:160]}). {_SAVE_STATE_DICT_HINT}"
            ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise ModelLoadError(f"{path}: not a PyTorch file ({str(error).splitlines()[0]})") from None
    return torch.load(path, map_location="cpu", weights_only=False)


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


def _call_factory(spec: str) -> nn.Module:
    target, _, attr = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            file = Path(target)
            if not file.is_file():
                raise ModelLoadError(f"factory file not found: {file}")
            module_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as error:
        raise ModelLoadError(f"cannot import {target!r} for model {spec!r}: {error}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"{target!r} has no callable {attr!r} (model spec {spec!r})")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    return model


def _torchvision_model(name: str) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise ModelLoadError(
            "torchvision models need torchvision: pip install 'convlens[torchvision]'"
        ) from None
    try:
        return torchvision.models.get_model(name, weights=None)
    except ValueError:
        names = ", ".join(sorted(torchvision.models.list_models())[:40])
        raise ModelLoadError(f"unknown torchvision model {name!r}; e.g. {names}, ...") from None


def _load_module(spec: str, weights: str | Path | None, trust_model: bool) -> tuple[nn.Module, str]:
    if spec.startswith("torchvision:"):
        name = spec.split(":", 1)[1]
        if weights is None:
            raise ModelLoadError(
                f"torchvision:{name} needs a local weights file (weights=...): convlens never "
                "downloads at run time"
            )
        return load_weights(_torchvision_model(name), weights, trust_model=trust_model), name
    path = Path(spec)
    if path.is_file():
        if weights is not None:
            raise ModelLoadError(f"{spec} is a model file; weights= applies to factories only")
        if path.suffix.lower() == ".pt2":
            return _load_exported(path, trust_model), path.stem
        if _is_torchscript(path):
            if not trust_model:
                raise UnsafeCheckpointError(
                    f"{path} is a TorchScript program: it defines the computation that will "
                    "run. Pass trust_model=True (CLI: --trust-model) if you trust its source"
                )
            try:
                return torch.jit.load(str(path), map_location="cpu"), path.stem
            except RuntimeError as error:
                raise ModelLoadError(f"{path}: invalid TorchScript archive ({error})") from None
        state = _torch_load(path, trust_model=trust_model)
        if isinstance(state, nn.Module):
            return state, path.stem
        raise ModelLoadError(
            f"{path} holds weights only (a state dict), not an architecture. Give the "
            "architecture too: load_model('package.module:factory', weights="
            f"'{path}') (CLI: --model package.module:factory --weights {path})"
        )
    if ":" in spec and not spec.endswith(":"):
        model = _call_factory(spec)
        if weights is not None:
            load_weights(model, weights, trust_model=trust_model)
        return model, spec.rpartition(":")[2]
    raise ModelLoadError(
        f"cannot find model {spec!r}: expected a bundled name ({', '.join(BUNDLED)}), a file "
        "(TorchScript .pt, torch.export .pt2), 'package.module:factory' or 'torchvision:NAME'"
    )


def _load_exported(path: Path, trust_model: bool) -> nn.Module:
    if not trust_model:
        raise UnsafeCheckpointError(
            f"{path} is a torch.export program: it defines the computation that will run. "
            "Pass trust_model=True (CLI: --trust-model) if you trust its source"
        )
    try:
        return torch.export.load(str(path)).module()
    except Exception as error:  # torch.export raises many types on bad archives
        raise ModelLoadError(f"{path}: invalid torch.export archive ({error})") from None


def load_model(spec: str | nn.Module = "efficientnet_lite0", *, weights: str | Path | None = None,
               labels: str | Path | Sequence[str] | None = None,
               input_size: int | tuple[int, int] | None = None, resize: str | None = None,
               resize_size: int | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, interpolation: str | None = None,
               device: str | torch.device | None = "auto", trust_model: bool = False
               ) -> Classifier:
    """Load a classifier by name, file or factory.

    Args:
        spec: ``"efficientnet_lite0"`` (bundled, ImageNet); a TorchScript or ``.pt2`` file;
            ``"package.module:factory"`` or ``"path/to/file.py:factory"`` (a callable that
            returns an ``nn.Module``); ``"torchvision:resnet50"``; or an ``nn.Module``.
        weights: State dict for a factory or torchvision model (``.safetensors``, or a
            ``torch.save``-d dict, read with ``weights_only=True``).
        labels: Text file (one name per line), JSON file, or a list of names. Default:
            ImageNet names for 1000-class models.
        input_size, resize, resize_size, mean, std, interpolation: Preprocessing overrides.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        trust_model: Allow files that are programs or need full unpickling (see module doc).

    Example:
        >>> clf = load_model()                                   # doctest: +SKIP
        >>> clf.predict("cat.jpg", top=3)                        # doctest: +SKIP
    """
    options: dict[str, Any] = {"input_size": input_size, "resize": resize,
                               "resize_size": resize_size, "mean": mean, "std": std,
                               "interpolation": interpolation}
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(spec, nn.Module):
        module, name = spec, type(spec).__name__
    elif spec in BUNDLED:
        from convlens.models import efficientnet_lite as zoo

        module, name = zoo.efficientnet_lite0(pretrained=True), spec
        defaults = {"input_size": zoo.INPUT_SIZE, "resize_size": zoo.RESIZE,
                    "mean": zoo.MEAN, "std": zoo.STD,
                    "interpolation": getattr(zoo, "INTERPOLATION", "bilinear")}
        options = {**defaults, **options}
        labels = imagenet_labels() if labels is None else labels
    elif isinstance(spec, (str, Path)):
        module, name = _load_module(str(spec), weights, trust_model)
    else:
        raise ModelLoadError(f"model must be a name, a path or an nn.Module, got {type(spec)}")
    if isinstance(labels, (str, Path)):
        labels = read_labels(labels)
    if not isinstance(spec, nn.Module):
        with contextlib.suppress(NotImplementedError):  # torch.export programs refuse eval()
            module.eval()  # a model we loaded ourselves; a user's module is left as it is
    classifier = Classifier(module, labels, device=device, name=name, **options)
    if classifier.labels is None:
        classes = _count_outputs(classifier)
        if classes == 1000:
            classifier.labels = imagenet_labels()
    return classifier


def _count_outputs(classifier: Classifier) -> int | None:
    height, width = classifier.preprocessing.input_size
    x = torch.zeros(1, classifier.preprocessing.channels, height, width,
                    device=classifier.device)
    try:
        out = classifier.logits(x)
    except Exception:
        return None
    return out.shape[1]
