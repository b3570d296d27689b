"""No import cycle in `extproc/` (issue 15, part 1).

Every `import` statement counts as an edge, wherever it is: at the top, inside a function or
under `if TYPE_CHECKING:`, since moving an import there hides a cycle without removing it.
`from a import b` is an edge to the module `a.b` when that is a module, else to `a`. (A
package's `__init__` running before its submodules is not counted: Python orders that itself.)
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def module_names(package: Path) -> dict[str, Path]:
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names one statement imports (a module, or a module's attribute)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        # Relative: `.` is this module's package (the module itself for an __init__).
        anchor = module.split(".")
        anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join([*anchor, *([base] if base else [])])
    return [f"{base}.{alias.name}" for alias in node.names]


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports."""
    modules = module_names(package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(node, name, path.name == "__init__.py"):
                # The longest prefix that is one of our modules: `a.b.C` is the class C of a.b.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(error.args[1])
    return None


def test_extproc_has_no_import_cycle() -> None:
    graph = import_graph(ROOT / "extproc")
    assert len(graph) > 50  # the whole package was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(reversed(cycle or []))


@pytest.mark.parametrize(
    "hidden_import",
    [
        "def later():\n    from pkg import a\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n",
        "from . import a\n",
    ],
    ids=["inside-a-function", "under-TYPE_CHECKING", "relative"],
)
def test_a_hidden_import_still_closes_a_cycle(tmp_path: Path, hidden_import: str) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import B\n\nclass A: ...\n")
    (package / "b.py").write_text(hidden_import + "\nclass B: ...\n")
    assert sorted(set(find_cycle(import_graph(package)) or [])) == ["pkg.a", "pkg.b"]
