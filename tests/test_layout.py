"""The package layout stays what the README's architecture section says: no import circle, no oversized module.

The import graph is read from the source (every ``import`` statement of ``compactsearch/`` and
``kernels/compact_attn/``, at module level and inside functions). An import of ``a.b.c`` also runs the packages
``a.b`` and ``a`` (their ``__init__``), so it is an edge to each of them too, except to the importer's own
ancestors (those are loaded already). A circle is a strongly connected component of more than one module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"compactsearch": ROOT / "compactsearch", "compact_attn": ROOT / "kernels" / "compact_attn"}
MAX_LINES = 450  # per module of compactsearch/ (the kernels are exempt: one kernel per file, whatever its length)


def _modules() -> dict[str, Path]:
    out = {}
    for top, base in PACKAGES.items():
        for path in base.rglob("*.py"):
            parts = [top, *path.relative_to(base).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(module: str, path: Path, modules: dict[str, Path], module_level: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    if module_level:  # statements run at import: module level, also inside module-level if / try blocks
        scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        nodes = [n for top in tree.body if not isinstance(top, scopes) for n in ast.walk(top)]
    else:
        nodes = list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    out = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            if target in modules and target != module and not module.startswith(target + "."):
                out.add(target)
    return out


def _circles(module_level: bool) -> list[list[str]]:
    modules = _modules()
    graph = {m: _imports(m, p, modules, module_level) for m, p in modules.items()}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


@pytest.mark.parametrize("module_level", [True, False], ids=["module-level", "all-imports"])
def test_no_import_circle(module_level):
    assert _circles(module_level) == []


def test_the_graph_sees_real_edges():
    """The check is not vacuous: known edges are found, parents' __init__ included."""
    modules = _modules()
    edges = _imports("compactsearch.config", modules["compactsearch.config"], modules, True)
    assert {"compactsearch.patterns", "compactsearch.tiling", "compact_attn.mask", "compact_attn"} <= edges
    lazy = _imports("compactsearch.config", modules["compactsearch.config"], modules, False)
    assert "compactsearch.adapters" in lazy - edges  # imported inside a function only


def test_no_file_outside_the_kernels_is_over_the_line_limit():
    """The package, the benchmarks, the tests and the scripts (the kernels' files are exempt)."""
    dirs = ("compactsearch", "benchmarks", "tests", "scripts", "recipes")
    files = [p for d in dirs for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 50
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these by job (README, Architecture): {long}"
