"""The package's structure: every module imports, no import cycles (at module level or
inside functions), library code never imports the CLI, ``kernels/`` imports nothing above
itself, and no private API of the libraries we build on."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import attnres_search

ROOT = Path(__file__).resolve().parents[1]
PRIVATE_CHECKED = ("optuna", "optuna_dashboard", "lightning", "pytorch_lightning")


def _module_files() -> dict[str, Path]:
    """Module name -> file, with ``kernels/`` under its installed name."""
    files: dict[str, Path] = {}
    for base, package in ((ROOT / "attnres_search", "attnres_search"), (ROOT / "kernels", "attnres_search.kernels")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([package, *parts])] = path
    return files


FILES = _module_files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> list[str]:
    """Every module ``module`` imports, wherever the import statement sits, except under
    ``if TYPE_CHECKING:`` (those never run)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                found.append(base)
                found.extend(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in FILES.items():
        graph[module] = {name for name in _imports(module, path) if name in FILES and name != module}
    return graph


def test_every_module_imports() -> None:
    names = sorted(FILES)
    assert "attnres_search.kernels.reference" in names and "attnres_search.residual.registry" in names
    for name in names:
        importlib.import_module(name)
    walked = {m.name for m in pkgutil.walk_packages(attnres_search.__path__, "attnres_search.")}
    assert walked <= set(FILES) | {"attnres_search.search_spaces"}


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    # A package's __init__ re-exporting its own submodules is not a cycle worth the name:
    # its submodules importing the package are. Report everything else.
    real = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)
            and not all(m == c[-2] or m.startswith(c[-2] + ".") for m in c)]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)


def test_library_code_never_imports_the_cli_and_kernels_import_nothing_above() -> None:
    graph = _graph()
    offenders = [(m, d) for m, deps in graph.items() for d in deps
                 if not m.startswith(("attnres_search.cli", "attnres_search.__main__"))
                 and d.startswith("attnres_search.cli")]
    assert not offenders, offenders
    kernel_offenders = [(m, d) for m, deps in graph.items() if m.startswith("attnres_search.kernels")
                        for d in deps if not d.startswith("attnres_search.kernels")]
    assert not kernel_offenders, kernel_offenders


def test_no_private_api_of_the_libraries_we_use() -> None:
    offenders = []
    for module, path in list(FILES.items()) + [(f"tests.{p.stem}", p) for p in (ROOT / "tests").glob("*.py")]:
        for name in _imports(module, path):
            parts = name.split(".")
            if parts[0] in PRIVATE_CHECKED and any(p.startswith("_") for p in parts[1:]):
                offenders.append((module, name))
        text = path.read_text()
        for marker in ('system_attrs["retry_history"]', "system_attrs['retry_history']", 'system_attrs["fixed_params"]',
                       "_rdb.models"):
            if marker in text and path.name != Path(__file__).name:
                offenders.append((module, marker))
    assert not offenders, offenders


@pytest.mark.parametrize("path", ["pyproject.toml"])
def test_declared_dependencies_are_used(path: str) -> None:
    text = (ROOT / path).read_text()
    assert "optuna-integration" not in text, "optuna-integration is declared but never imported"
