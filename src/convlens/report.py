"""Batch jobs over image files: explanations written to disk (the demo moved to jobs/demo.py).

:class:`ExplainJob` walks files and folders, explains them batch by batch, writes the PNGs
and keeps ``results.json`` up to date after every batch, so a crash or a bad file never
loses finished work. Bad files are recorded and skipped.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from convlens.errors import ConvlensError
from convlens.models.classifier import Classifier


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".results-", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class ExplainJob:
    """Explain many images with several methods and write everything under ``out``.

    Files written, per image (``NAME`` is a sanitised, de-duplicated file stem that cannot
    escape ``out``): ``NAME.METHOD.png`` (overlay), ``NAME.grid.png`` (photo + every method,
    titled with the class and its probability) and, for all images, ``results.json``.

    Args:
        classifier: The model.
        methods: Method names.
        out: Output folder (created).
        target: ``None``/``"pred"``, a class index or name, or ``"top:K"``.
        layer: Layer for layer-space methods.
        normalize: ``image`` or ``batch`` (a batch is ``batch_size`` images).
        batch_size: Images explained together.
        options: Method options, passed to :func:`convlens.explain`.
    """

    def __init__(self, classifier: Classifier, methods: Sequence[str], out: Path, *,
                 target: Any = None, layer: str | None = None, normalize: str = "image",
                 batch_size: int = 8, options: dict[str, Any] | None = None) -> None:
        self.classifier = classifier
        self.methods = list(methods)
        self.out = Path(out)
        self.target = None if target in (None, "pred") else target
        self.layer = layer
        self.normalize = normalize
        self.batch_size = max(1, int(batch_size))
        self.options = options or {}
        self.records: list[dict[str, Any]] = []
        self.problems: list[dict[str, str]] = []
        self._used_names: set[str] = set()
        self.layer_name: str | None = None

    @property
    def results_path(self) -> Path:
        return self.out / "results.json"

    def summary(self) -> dict[str, Any]:
        """What ``results.json`` holds."""
        return {
            "model": self.classifier.name,
            "methods": self.methods,
            "target": "pred" if self.target is None else self.target,
            "layer": self.layer_name,
            "normalize": self.normalize,
            "images": self.records,
            "errors": self.problems,
        }

    def run(self, inputs: Iterable[str | os.PathLike], *, progress: bool = False
            ) -> list[dict[str, str]]:
        """Process every input; returns the problems (bad files), also in results.json."""
        from convlens.io.images import expand_inputs

        files, problems = expand_inputs(list(inputs))
        self.problems.extend({"path": str(p.path), "error": p.reason} for p in problems)
        self.out.mkdir(parents=True, exist_ok=True)
        batches = [files[i:i + self.batch_size] for i in range(0, len(files), self.batch_size)]
        if progress and len(files) > 1:
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task("explaining", total=len(files))
                for batch in batches:
                    self._run_batch(batch)
                    bar.advance(task, len(batch))
        else:
            for batch in batches:
                self._run_batch(batch)
        write_json_atomic(self.results_path, self.summary())
        return self.problems

    def _run_batch(self, paths: Sequence[Path]) -> None:
        from convlens.explain import explain
        from convlens.io.images import load_image, safe_output_name

        images, names, good = [], [], []
        for path in paths:
            try:
                images.append(load_image(path))
            except ConvlensError as error:
                self.problems.append({"path": str(path),
                                      "error": getattr(error, "reason", str(error))})
                continue
            good.append(path)
            names.append(safe_output_name(path, self._used_names))
        if images:
            explanations = explain(self.classifier, images, self.methods, target=self.target,
                                   layer=self.layer, normalize=self.normalize, names=names,
                                   **self.options)
            per_image = len(explanations) // len(images)
            for index, explanation in enumerate(explanations):
                path = good[index // per_image]
                prefix = explanation.name
                if per_image > 1:
                    prefix = f"{explanation.name}.class{explanation.target}"
                files = explanation.save(self.out, prefix=prefix)
                self.layer_name = explanation.layer
                self.records.append(self._record(path, explanation, files))
        write_json_atomic(self.results_path, self.summary())

    def _record(self, path: Path, explanation: Any, files: list[Path]) -> dict[str, Any]:
        return {
            "path": str(path),
            "name": explanation.name,
            "predictions": [{"label": label, "probability": round(p, 6)}
                            for label, p in explanation.predictions],
            "target": {"index": explanation.target, "label": explanation.target_label,
                       "probability": round(explanation.probability, 6)},
            "empty_maps": [m for m in explanation.methods if explanation.empty(m)],
            "scales": {m: explanation.scales.get(m) for m in explanation.methods},
            "files": {f.name.split(".")[-2]: f.name for f in files},
        }
