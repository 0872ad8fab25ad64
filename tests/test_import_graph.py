"""The import graph of ``src/convlens``: no cycle, no import against the layer order.

Every module is parsed with :mod:`ast` (nothing is imported), and every ``import`` /
``from ... import`` of a convlens module becomes an edge: module-level and function-level
alike, relative and absolute, ``from convlens.x import y`` pointing at ``convlens.x.y`` when
``y`` is a submodule. Imports under ``if TYPE_CHECKING:`` count too: they are dependencies
even if they never run. The layer order is docs/architecture.md, "Layers and the direction
data flows". ``KNOWN_CYCLES`` and ``KNOWN_UPWARD`` are empty since issue 19 (convlens 13):
any cycle or upward import fails, lazy or not.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "convlens"

# docs/architecture.md, "Layers and the direction data flows": the chain
#   io (with preprocessing.py) -> models -> attribution -> present -> visualization
#   -> explanations -> engines -> jobs -> metrics -> concepts -> auditing -> correction
#   -> cli / app
# with the leaves any module may import. A module may import its own layer and those to its left.
LAYER_RANK: dict[str, int] = {
    "leaves": 0,
    "io": 1,
    "models": 2,
    "attribution": 3,
    "present": 4,
    "visualization": 5,
    "explanations": 6,
    "engines": 7,
    "jobs": 8,
    "metrics": 9,
    "concepts": 10,
    "auditing": 11,
    "correction": 12,
    "cli": 13,
    "app": 13,
}

# The leaves the document names, plus the modules it lists at the top of the tree that import
# nothing of convlens: `_hooks.py`, the bundled data, and the package itself (it holds
# `__version__` and resolves its public names lazily by string, through importlib).
# `objectives.py` re-exports visualization/objectives.py, so it sits in that layer.
# `preprocessing.py` decodes through io/images.py, so it sits in the io layer (below models).
LEAF_MODULES = {
    PACKAGE,
    "convlens.errors",
    "convlens.discovery",
    "convlens.files",
    "convlens.option_types",
    "convlens.progress",
    "convlens.store",
    "convlens._hooks",
    "convlens.data",
}
MODULE_LAYER = {"convlens.objectives": "visualization", "convlens.preprocessing": "io"}

# Cycles (each a strongly connected component, named by its modules) and upward imports
# (importer, imported) still allowed: none since issue 19 (convlens 13) broke the last ones,
# so these tests prove the graph acyclic and ordered. Break a new one; do not list it.
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_UPWARD: set[tuple[str, str]] = set()


@dataclass
class ImportGraph:
    """Modules of one package, their convlens imports, and how many of those are lazy."""

    modules: set[str] = field(default_factory=set)
    edges: dict[str, set[str]] = field(default_factory=dict)
    function_level: list[tuple[str, int, str]] = field(default_factory=list)


def _module_name(path: Path, src: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(src).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _resolve(name: str, modules: set[str]) -> str | None:
    """The deepest known module that ``name`` is or lies in (``a.b.func`` -> ``a.b``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(tree: ast.Module, module: str, is_package: bool, root: str):
    """Yield (candidate names, line, inside a function) for every import statement of ``root``.

    ``from a import b`` yields ``a.b``: the submodule when ``b`` is one, else it resolves to ``a``.
    """
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    stem = ".".join([*base, child.module] if child.module else base)
                else:
                    stem = child.module or ""
                names = [f"{stem}.{alias.name}" for alias in child.names]
            else:
                lazy = in_function or isinstance(
                    child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
                )
                yield from visit(child, lazy)
                continue
            names = [n for n in names if n == root or n.startswith(root + ".")]
            if names:
                yield names, child.lineno, in_function

    yield from visit(tree, False)


def build_graph(src: Path, root: str = PACKAGE) -> ImportGraph:
    """Parse every module under ``src/root`` and return its import graph."""
    graph = ImportGraph()
    named = [(path, *_module_name(path, src)) for path in sorted((src / root).rglob("*.py"))]
    graph.modules = {name for _, name, _ in named}
    for path, name, is_package in named:
        targets = graph.edges.setdefault(name, set())
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for imported, line, lazy in _imports(tree, name, is_package, root):
            resolved = {_resolve(n, graph.modules) for n in imported} - {None}
            targets |= resolved
            if lazy and resolved:
                graph.function_level.append((name, line, ", ".join(sorted(resolved))))
    return graph


def cycles(graph: ImportGraph) -> set[frozenset[str]]:
    """Every strongly connected component of more than one module, and every self loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    counter = [0]

    def connect(node: str) -> None:
        # Iterative Tarjan: the graph is small, but recursion depth should not depend on it.
        work = [(node, iter(sorted(graph.edges.get(node, ()))))]
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        while work:
            current, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[current] = min(low[current], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[current])
                if low[current] == index[current]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == current:
                            break
                    if len(component) > 1:
                        found.add(frozenset(component))

    for node in sorted(graph.modules):
        if node not in index:
            connect(node)
    found |= {frozenset({m}) for m, targets in graph.edges.items() if m in targets}
    return found


def layer_of(module: str) -> str:
    """The layer of ``module`` in docs/architecture.md's order."""
    if module in LEAF_MODULES:
        return "leaves"
    if module in MODULE_LAYER:
        return MODULE_LAYER[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: ImportGraph) -> set[tuple[str, str]]:
    """Every (importer, imported) pair where the imported module lies in a later layer."""
    return {
        (module, target)
        for module, targets in graph.edges.items()
        for target in targets
        if LAYER_RANK[layer_of(target)] > LAYER_RANK[layer_of(module)]
    }


def _named_cycles(found: set[frozenset[str]]) -> list[str]:
    return sorted(" <-> ".join(sorted(component)) for component in found)


def test_no_new_import_cycle_and_no_stale_allowlist_entry() -> None:
    found = cycles(build_graph(SRC))
    new = _named_cycles(found - KNOWN_CYCLES)
    gone = _named_cycles(KNOWN_CYCLES - found)
    assert not new, (
        f"import cycles not in KNOWN_CYCLES (break them; see docs/architecture.md): {new}"
    )
    assert not gone, f"KNOWN_CYCLES lists cycles that no longer occur (delete them): {gone}"


def test_no_new_import_against_the_layer_order_and_no_stale_entry() -> None:
    found = upward_imports(build_graph(SRC))
    new = sorted(found - KNOWN_UPWARD)
    gone = sorted(KNOWN_UPWARD - found)
    assert not new, (
        "imports against docs/architecture.md's layer order, not in KNOWN_UPWARD "
        f"(importer, imported): {new}"
    )
    assert not gone, f"KNOWN_UPWARD lists imports that no longer occur (delete them): {gone}"


def test_the_registries_are_leaves() -> None:
    """Issue 19 item 1: a registry imports only leaves (errors, the metric presets), never a
    family or core module, so no family closes a cycle through it."""
    graph = build_graph(SRC)
    allowed = LEAF_MODULES | {"convlens.metrics.presets"}
    for registry in ("convlens.attribution.registry", "convlens.metrics.registry"):
        assert registry in graph.modules, f"{registry} is missing"
        assert graph.edges[registry] <= allowed, (registry, sorted(graph.edges[registry] - allowed))


def test_every_module_has_a_layer() -> None:
    graph = build_graph(SRC)
    unplaced = sorted(m for m in graph.modules if layer_of(m) not in LAYER_RANK)
    assert not unplaced, f"modules in no documented layer (add them to LAYER_RANK): {unplaced}"


def test_function_level_imports_are_counted() -> None:
    graph = build_graph(SRC)
    # Printed for the record (pytest -s); issue 19 asks for this number to be halved.
    print(f"function-level imports of convlens modules: {len(graph.function_level)}")
    assert len(graph.function_level) <= FUNCTION_LEVEL_BEFORE // 2


# Issue 19 item 4: imports at the top of a file. Anywhere in the package, a function-level import
# of a convlens module needs its reason on its line ("# lazy: <why>"): an optional extra, or a
# measured start-up cost (cli/: `convlens --help` imports no torch). Avoiding a cycle is no
# reason: break the cycle instead.
TOP_IMPORT_PACKAGES = (PACKAGE,)
# Issue 19's proof: function-level convlens imports halved at least (230 when it was filed, by
# build_graph's count; 28 after, all in cli/ for --help's start-up).
FUNCTION_LEVEL_BEFORE = 230


def _module_path(module: str, src: Path = SRC) -> Path:
    base = src.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _explained(lines: list[str], line: int) -> bool:
    """A ``# lazy: <why>`` on the import's line, or on a comment line just above the run of
    import lines it belongs to (one reason for a block of lazy imports)."""
    if "# lazy:" in lines[line - 1]:
        return True
    above = line - 2
    while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("# lazy:")


def test_imports_sit_at_the_top_unless_a_comment_says_why() -> None:
    graph = build_graph(SRC)
    unexplained = []
    for module, line, imported in graph.function_level:
        if not module.startswith(TOP_IMPORT_PACKAGES):
            continue
        if not _explained(_module_path(module).read_text(encoding="utf-8").splitlines(), line):
            unexplained.append(f"{module}:{line} ({imported})")
    assert not unexplained, (
        "function-level convlens imports without a '# lazy: <why>' comment (move them to the "
        "top of the module; docs/architecture.md, \"Layers and the direction data flows\"): "
        f"{unexplained}"
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_cycle_through_a_lazy_relative_import_is_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "toy/__init__.py": "",
            "toy/a.py": "from toy.b import thing\n",
            "toy/b.py": "def thing():\n    from . import a\n    return a\n",
            "toy/c.py": "import toy.a\n",
            "toy/sub/__init__.py": "from toy.sub import leaf\n",
            "toy/sub/leaf.py": "from toy.sub import NAME\n",
        },
    )
    graph = build_graph(tmp_path, root="toy")
    assert cycles(graph) == {
        frozenset({"toy.a", "toy.b"}),
        frozenset({"toy.sub", "toy.sub.leaf"}),
    }
    assert graph.function_level == [("toy.b", 2, "toy.a")]


def test_an_acyclic_package_has_no_cycle_and_a_self_import_is_one(tmp_path: Path) -> None:
    _write(tmp_path, {"toy/__init__.py": "", "toy/a.py": "import toy.b\n", "toy/b.py": "x = 1\n"})
    assert cycles(build_graph(tmp_path, root="toy")) == set()
    _write(tmp_path, {"toy/b.py": "def f():\n    from toy import b\n"})
    assert cycles(build_graph(tmp_path, root="toy")) == {frozenset({"toy.b"})}
