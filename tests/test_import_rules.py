"""The import rule of every folder (docs/architecture.md, "Import rules"): data flows one way.

Every ``import`` and ``from ... import`` anywhere in a file counts, lazy ones inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# folder or file -> module prefixes it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "cama/protocols.py": ("cama", "lightning", "callbacks", "datamodules"),
    "cama/backbones": ("cama.models", "cama.metrics", "cama.viz", "cama.references", "callbacks", "datamodules"),
    "cama/metrics": ("lightning", "cama.models", "cama.viz", "cama.references", "callbacks", "datamodules"),
    "cama/references.py": ("lightning", "cama.models", "cama.viz", "callbacks", "datamodules"),
    "cama/viz": ("lightning", "cama.models", "cama.metrics", "cama.references", "callbacks", "datamodules"),
    "cama/models": ("callbacks", "datamodules", "cama.viz"),
    "cama/map_scoring": ("lightning", "cama.models", "callbacks", "datamodules"),
    "cama/checkpoint_files.py": ("lightning", "cama.models", "callbacks", "datamodules"),
    "cama/runs.py": ("cama.models", "cama.viz", "callbacks", "datamodules"),
    "cama/loading.py": ("cama.models", "cama.viz", "callbacks", "datamodules"),
    "callbacks": ("cama.models", "datamodules"),
    "datamodules": ("callbacks", "cama.models", "cama.metrics", "cama.viz", "cama.references", "cama.explain"),
}


def imported_modules(source: Path, root: Path = ROOT) -> list[str]:
    """Absolute module names imported by ``source`` (relative imports resolved against ``root``)."""
    package = source.relative_to(root).with_suffix("").parts[:-1]
    names: list[str] = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return names


def breaks(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("place", sorted(FORBIDDEN))
def test_folder_imports_follow_the_rule(place: str) -> None:
    path = ROOT / place
    files = [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
    assert files, f"{place} holds no Python file"
    wrong = [
        (f.relative_to(ROOT).as_posix(), name)
        for f in files
        for name in imported_modules(f)
        if breaks(name, FORBIDDEN[place])
    ]
    assert wrong == [], f"{place} must not import {FORBIDDEN[place]}"


def test_the_rule_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "callbacks" / "probe.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from cama.models.fewshot import ProtoNet\nfrom .base import x\n")
    names = imported_modules(source, tmp_path)
    assert "cama.models.fewshot" in names and breaks("cama.models.fewshot", FORBIDDEN["callbacks"])
    assert "callbacks.base" in names and not breaks("callbacks.base", FORBIDDEN["callbacks"])


# ------------------------------------------------------------------------------------------- cycles
PACKAGES = ("cama", "callbacks", "datamodules", "explain_command")


def module_of(path: Path, root: Path = ROOT) -> str:
    """``cama/explain/maps.py`` -> ``cama.explain.maps``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(source: Path, root: Path) -> list[tuple[str, list[str]]]:
    """``(module, [imported names])`` of every import of ``source`` that runs (lazy ones inside
    functions included, ``if TYPE_CHECKING:`` blocks left out), relative imports resolved."""
    package = source.relative_to(root).with_suffix("").parts[:-1]
    tree = ast.parse(source.read_text())
    skipped = {
        id(n) for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in node.body for n in ast.walk(inner)
    }
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            found.append((".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names]))
    return found


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports when it runs (lazy imports inside functions included):
    ``from pkg import sub`` is an import of the module ``pkg.sub`` when there is one, else of ``pkg``;
    an imported name resolves to the longest project module it names."""
    files = {module_of(f, root): f for p in packages for f in sorted((root / p).rglob("*.py"))}

    def longest(dotted: str) -> str | None:
        parts = dotted.split(".")
        return next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in files), None)

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for module, names in _runtime_imports(path, root):
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in files]
            for target in submodules or [longest(module)]:
                if target is not None and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_the_project() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_lazy_cycle(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import x\n")
    (package / "b.py").write_text("def f():\n    from .c import y\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg import a\nif TYPE_CHECKING:\n    from pkg.d2 import z\n")
    (package / "d2.py").write_text("import pkg.d\n")  # only a type-checking import back: no cycle
    assert cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.b", "pkg.c"]]
