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
import hashlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.errors import ModelLoadError, UnsafeCheckpointError
from convlens.models import efficientnet_lite as zoo
from convlens.models.classifier import Classifier
from convlens.models.corrected import is_correction, load_correction
from convlens.models.onnx_models import load_onnx
from convlens.models.timm_models import load_timm
from convlens.models.weights import (
    _FOUND,
    _is_torchscript,
    _plain,
    _torch_load,
    load_weights,
    read_state_dict,  # noqa: F401  (its home until convlens 13; importers may still use it)
    sniff_file,
)
from convlens.preprocessing import check_input_size

BUNDLED = ("efficientnet_lite0",)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, in output order (shipped with convlens)."""
    from importlib.resources import files

    text = files("convlens.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]


def read_labels(path: str | Path) -> list[str]:
    """Class names from a text file (one per line) or JSON (list, or {index: name})."""
    path = Path(path)
    accepted = "expected a text file (one class name per line) or a JSON list of names"
    if path.is_dir():
        raise ModelLoadError(f"labels {path} is a folder; {accepted}")
    if not path.is_file():
        raise ModelLoadError(f"labels file not found: {path}; {accepted}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ModelLoadError(f"labels {path} is not UTF-8 text ({sniff_file(path)} file); "
                             f"{accepted}") from None
    except OSError as error:
        raise ModelLoadError(f"labels {path}: cannot read ({error.strerror}); {accepted}") from None
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


def _call_factory(spec: str) -> nn.Module:
    """Import ``module:factory`` (or ``file.py:factory``) and call it with no arguments.

    The factory is the user's code: whatever it raises while importing or running, an
    exit() (``SystemExit``) included, becomes one ModelLoadError naming the spec and the
    original exception's type and first line; only Ctrl-C passes through. Without this, a
    factory calling exit() ended the command with its exit code (0: success) and anything
    else with a traceback.
    """
    target, _, attr = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            file = Path(target)
            if not file.is_file():
                raise ModelLoadError(f"factory file not found: {file}")
            # Registered under a private, path-derived name while it runs: dataclasses and
            # pickling look their module up in sys.modules (a bare exec_module crashes them).
            name = f"convlens_factory_{hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]}"
            module_spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
        else:
            module = importlib.import_module(target)
    except ImportError as error:
        raise ModelLoadError(f"cannot import {target!r} for model {spec!r}: {error}") from None
    except (Exception, SystemExit) as error:
        if isinstance(error, ModelLoadError):
            raise
        raise ModelLoadError(f"importing {target!r} for model {spec!r} failed: "
                             f"{_raised(error)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"{target!r} has no callable {attr!r} (model spec {spec!r})")
    try:
        model = factory()
    except (Exception, SystemExit) as error:
        raise ModelLoadError(
            f"the model factory {spec!r} raised {_raised(error)}; a factory is called with "
            "no arguments and must return an nn.Module") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec} returned {type(model).__name__}, not an nn.Module; a "
                             "factory is called with no arguments and must return an nn.Module")
    return model


def _raised(error: BaseException) -> str:
    """``TypeError: first line of its message``; SystemExit is named as the exit() it is."""
    if isinstance(error, SystemExit):
        return f"SystemExit (it called exit({error.code!r}) or sys.exit)"
    text = _plain(error, limit=200) if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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
    if path.is_dir():
        raise ModelLoadError(f"model {spec!r} is a folder; expected a model file (TorchScript "
                             ".pt, torch.export .pt2), a bundled name, 'package.module:factory' "
                             "or 'torchvision:NAME'")
    if path.is_file():
        if weights is not None:
            raise ModelLoadError(
                f"{spec} is a model file, which holds its own weights; weights= (CLI: "
                "--weights) applies to a factory or torchvision:NAME only"
            )
        kind = sniff_file(path)
        if kind in ("text", "image", "empty", "binary", "safetensors"):
            found = ("holds weights only (safetensors), not an architecture"
                     if kind == "safetensors" else _FOUND[kind])
            raise ModelLoadError(
                f"{path} {found}; a model file is a TorchScript .pt or a torch.export .pt2"
                + (f". Give the architecture too: --model package.module:factory --weights "
                   f"{path}" if kind == "safetensors" else "")
            )
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
                raise ModelLoadError(
                    f"{path}: invalid TorchScript archive ({_plain(error)})") from None
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
        raise ModelLoadError(f"{path}: invalid torch.export archive ({_plain(error)})") from None


def model_source(spec: str | Path | nn.Module) -> str:
    """Which kind of model ``spec`` names: ``"module"``, ``"bundled"``, ``"torchvision"``,
    ``"timm"``, ``"file"`` (TorchScript, .pt2, .onnx or a pickled module), ``"factory"`` or
    ``"unknown"``."""
    if isinstance(spec, nn.Module):
        return "module"
    text = str(spec)
    if text in BUNDLED:
        return "bundled"
    if text.startswith("torchvision:"):
        return "torchvision"
    if text.startswith("timm:"):
        return "timm"
    if Path(text).is_file():
        return "file"
    if ":" in text and not text.endswith(":"):
        return "factory"
    return "unknown"


def check_model_options(spec: str | Path | nn.Module, *, weights: str | Path | None = None,
                        trust_model: bool = False) -> None:
    """Refuse ``weights`` / ``trust_model`` where they cannot apply (instead of ignoring them).

    Which option applies to which source:

    =================  =========================  ==========================================
    source             weights                    trust_model
    =================  =========================  ==========================================
    bundled name       refused (ships its own)    refused (nothing to trust)
    nn.Module          refused (load it yourself) refused (nothing is loaded)
    model file         refused (holds weights)    required (TorchScript, pt2, onnx, pickle)
    factory            optional                   only with a .pt/.pth weights file
    torchvision:NAME   required                   only with a .pt/.pth weights file
    timm:NAME          required                   only with a .pt/.pth weights file
    =================  =========================  ==========================================

    Preprocessing overrides (input size, resize, mean, std, labels) apply to every source:
    for the bundled model they replace its ImageNet settings.

    Raises:
        ModelLoadError: An option that cannot apply, naming why.
    """
    source = model_source(spec)
    if source in ("bundled", "module"):
        what = (f"the bundled model {spec!r} ships its own ImageNet weights" if source == "bundled"
                else "an nn.Module is used as it is")
        if weights is not None:
            fix = ("to use other weights, give their architecture: model='package.module:"
                   "factory' or 'torchvision:NAME' (CLI: --model) with weights=")
            if source == "module":
                fix = "load the state dict into the module yourself (module.load_state_dict)"
            raise ModelLoadError(f"weights= (CLI: --weights) cannot apply: {what}; {fix}")
        if trust_model:
            raise ModelLoadError(f"trust_model (CLI: --trust-model) cannot apply: {what} and "
                                 "no file is unpickled or run; drop the flag")
    if source in ("factory", "torchvision", "timm") and trust_model:
        if weights is None:
            raise ModelLoadError(
                f"trust_model (CLI: --trust-model) cannot apply: {spec!r} is Python code you "
                "named and no weights file is given; it is needed only for a model file or a "
                "weights file that must be unpickled"
            )
        if sniff_file(Path(weights)) == "safetensors":
            raise ModelLoadError(
                f"trust_model (CLI: --trust-model) cannot apply: {weights} is a safetensors "
                "file, which holds tensors only and never runs code; drop the flag"
            )


def load_model(spec: str | nn.Module = "efficientnet_lite0", *, weights: str | Path | None = None,
               labels: str | Path | Sequence[str] | None = None,
               input_size: int | tuple[int, int] | None = None, resize: str | None = None,
               resize_size: int | tuple[int, int] | None = None,
               mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, interpolation: str | None = None,
               device: str | torch.device | None = "auto", trust_model: bool = False
               ) -> Classifier:
    """Load a classifier by name, file or factory.

    Args:
        spec: ``"efficientnet_lite0"`` (bundled, ImageNet); a TorchScript, ``.pt2`` or
            ``.onnx`` file; ``"package.module:factory"`` or ``"path/to/file.py:factory"`` (a
            callable that returns an ``nn.Module``); ``"torchvision:resnet50"``;
            ``"timm:NAME"`` (its own preprocessing); or an ``nn.Module``.
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
    # a folder `convlens correct` wrote (docs/architecture.md)
    if isinstance(spec, (str, Path)) and is_correction(spec):
        given = [name for name, value in (("weights", weights), ("labels", labels),
                                          ("input_size", input_size), ("mean", mean),
                                          ("std", std), ("resize", resize)) if value]
        if given:
            raise ModelLoadError(
                f"{spec} is a corrected model: its card fixes the weights, labels and "
                f"preprocessing; drop {', '.join(given)}")
        return load_correction(spec, load_model, device=device)
    check_model_options(spec, weights=weights, trust_model=trust_model)
    if input_size is not None:
        check_input_size(input_size)  # before a model is built or a file read
    options: dict[str, Any] = {"input_size": input_size, "resize": resize,
                               "resize_size": resize_size, "mean": mean, "std": std,
                               "interpolation": interpolation}
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(spec, nn.Module):
        module, name = spec, type(spec).__name__
    elif spec in BUNDLED:
        module, name = zoo.efficientnet_lite0(pretrained=True), spec
        defaults = {"input_size": zoo.INPUT_SIZE, "resize_size": zoo.RESIZE,
                    "mean": zoo.MEAN, "std": zoo.STD,
                    "interpolation": getattr(zoo, "INTERPOLATION", "bilinear")}
        options = {**defaults, **options}
        labels = imagenet_labels() if labels is None else labels
    elif model_source(spec) == "timm":  # docs/architecture.md, "Models"
        name = str(spec).split(":", 1)[1]
        module, defaults = load_timm(name, weights, trust_model=trust_model)
        options = {**defaults, **options}
    elif model_source(spec) == "file" and str(spec).lower().endswith(".onnx"):
        module, defaults = load_onnx(spec, weights=weights, trust_model=trust_model)
        name, options = Path(spec).stem, {**defaults, **options}
    elif isinstance(spec, (str, Path)):
        module, name = _load_module(str(spec), weights, trust_model)
    else:
        raise ModelLoadError(f"model must be a name, a path or an nn.Module, got {type(spec)}")
    labels_path = labels if isinstance(labels, (str, Path)) else None
    if labels_path is not None:
        labels = read_labels(labels_path)
    if not isinstance(spec, nn.Module):
        with contextlib.suppress(NotImplementedError):  # torch.export programs refuse eval()
            module.eval()  # a model we loaded ourselves; a user's module is left as it is
    classifier = Classifier(module, labels, device=device, name=name, **options)
    classes = _count_outputs(classifier)
    if classifier.labels is None:
        if classes == 1000:
            classifier.labels = imagenet_labels()
    elif classes is not None and classes != len(classifier.labels):
        source = f" in {labels_path}" if labels_path is not None else ""
        raise ModelLoadError(
            f"{len(classifier.labels)} labels{source} but the model has {classes} outputs; "
            "give one class name per output, in output order (CLI: --labels FILE)"
        )
    return classifier


def _count_outputs(classifier: Classifier) -> int | None:
    height, width = classifier.preprocessing.input_size
    try:
        x = torch.zeros(1, classifier.preprocessing.channels, height, width,
                        device=classifier.device)
    except RuntimeError as error:  # out of memory: an input size below the cap, still too big
        raise ModelLoadError(
            f"cannot allocate one {classifier.preprocessing.channels}x{height}x{width} input "
            f"on {classifier.device} ({_plain(error)}); give a smaller input size (CLI: "
            "--input-size)") from None
    first_conv = next((m for m in classifier.module.modules() if isinstance(m, nn.Conv2d)), None)
    channels = classifier.preprocessing.channels
    if first_conv is not None and first_conv.in_channels != channels:
        raise ModelLoadError(
            f"mean/std give {channels} value(s) but the model's first convolution takes "
            f"{first_conv.in_channels} channels; give one value per input channel (CLI: "
            "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)"
        )
    labels, classifier.labels = classifier.labels, None  # count first, compare after
    try:
        out = classifier.logits(x)
    except ModelLoadError:
        raise
    except RuntimeError as error:  # shapes: the input size or channels do not fit the model
        raise ModelLoadError(
            f"the model fails on a {channels}x{height}x{width} input ({_plain(error)}); check "
            "the input size (CLI: --input-size) and the channels (one --mean/--std value each)"
        ) from None
    except Exception:
        return None
    finally:
        classifier.labels = labels
    return out.shape[1]
