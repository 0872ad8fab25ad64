"""The public names of ``convlens``: lazy, and never shadowed by a submodule of the same name."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import convlens


def test_no_submodule_shadows_a_public_function() -> None:
    # Importing convlens.X binds the attribute X of the package to the module: a module
    # named like a public function (explain, audit...) would replace the function.
    submodules = {info.name for info in pkgutil.iter_modules(convlens.__path__)}
    clashes = sorted(name for name in convlens.__all__
                     if name in submodules and name not in ("objectives", "metrics"))
    assert clashes == []


def test_public_functions_stay_functions_after_every_submodule_is_imported() -> None:
    for info in pkgutil.walk_packages(convlens.__path__, "convlens."):
        if ".app" in info.name:  # optional web extra
            continue
        importlib.import_module(info.name)
    for name in ("explain", "iter_explain", "audit", "evaluate", "attribute", "visualize"):
        assert callable(getattr(convlens, name)), name
        assert not isinstance(getattr(convlens, name), type(convlens)), name


def test_importing_convlens_does_not_import_torch() -> None:
    code = "import sys, convlens; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_submodules_named_in_the_api_work_right_after_import() -> None:
    # cl.metrics raised AttributeError until something imported convlens.metrics
    code = ("import sys, convlens as cl; print('torch' in sys.modules); "
            "print(callable(cl.metrics.deletion), callable(cl.objectives.channel)); "
            "print(cl.metrics is sys.modules['convlens.metrics'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "True", "True", "True"]


def test_moved_leaves_keep_their_old_import_paths() -> None:
    # issue 19: progress.py, store.py and preprocessing.py moved to the top of the tree; the
    # old paths are aliases of the new modules, so old imports and monkeypatch targets work.
    from convlens.jobs.progress import ProgressEvent, in_notebook
    from convlens.jobs.store import _SHARD, ResultStore
    from convlens.models.preprocessing import Preprocessing, _crop_offset

    for old, new in [("convlens.jobs.progress", "convlens.progress"),
                     ("convlens.jobs.store", "convlens.store"),
                     ("convlens.models.preprocessing", "convlens.preprocessing")]:
        assert importlib.import_module(old) is importlib.import_module(new), old
    assert ProgressEvent is importlib.import_module("convlens.progress").ProgressEvent
    assert in_notebook is importlib.import_module("convlens.progress").in_notebook
    assert ResultStore is importlib.import_module("convlens.store").ResultStore
    assert _SHARD is importlib.import_module("convlens.store")._SHARD
    assert Preprocessing is importlib.import_module("convlens.preprocessing").Preprocessing
    assert _crop_offset is importlib.import_module("convlens.preprocessing")._crop_offset
