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
