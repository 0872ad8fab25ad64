"""Each registry package imports every module of its folder (convlens/discovery.py), so a
new family file is found with nothing else to edit (issue 19, item 1)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import pytest

from convlens.discovery import import_modules


@pytest.mark.parametrize("package", ["convlens.attribution", "convlens.attribution.relevance",
                                     "convlens.metrics", "convlens.engines"])
def test_importing_the_package_imported_every_public_module_of_its_folder(package: str) -> None:
    folder = importlib.import_module(package).__path__
    public = sorted(info.name for info in pkgutil.iter_modules(folder)
                    if not info.name.startswith("_"))
    assert public and all(f"{package}.{name}" in sys.modules for name in public)
    assert import_modules(package) == tuple(public)  # sorted, and a second call is harmless


def test_a_private_module_is_skipped_and_a_new_one_found(tmp_path, monkeypatch) -> None:
    package = tmp_path / "toypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "b_family.py").write_text("ORDER = []\n")
    (package / "a_family.py").write_text("import toypkg.b_family as b\nb.ORDER.append('a')\n")
    (package / "_private.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("toypkg")
    try:
        assert import_modules("toypkg") == ("a_family", "b_family")
        (package / "c_family.py").write_text("FOUND = True\n")
        importlib.invalidate_caches()  # the folder changed within the finder's mtime tick
        assert import_modules("toypkg") == ("a_family", "b_family", "c_family")
        assert sys.modules["toypkg.c_family"].FOUND
    finally:
        for name in [m for m in sys.modules if m == "toypkg" or m.startswith("toypkg.")]:
            del sys.modules[name]
