"""How storage and feedback import: never torch (the app runs on a machine without it), and without
circles, so every module imports on its own whatever was imported before it."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

import tether

SRC = Path(tether.__file__).parents[1]
PACKAGE = Path(tether.__file__).parent
CHECKED = ("tether.feedback", "tether.storage")


def _run(code: str) -> subprocess.CompletedProcess:
    """Runs Python code in a fresh interpreter that sees only this checkout's `tether`."""
    return subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    """Every module of the tether package, by dotted name (a package by its own name)."""
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _checked(name: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in CHECKED)


CHECKED_MODULES = sorted(name for name in _modules() if _checked(name))


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The tether modules that a module imports anywhere: at the top, in functions, under TYPE_CHECKING.

    `from P import n` counts as importing the module P.n when there is one, else P itself.
    """
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found & known


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) - {name} for name, path in modules.items()}


def _path_back(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A chain of imports from `start` back to itself, or None."""
    parent: dict[str, str] = {}
    queue = deque(sorted(graph[start]))
    for first in queue:
        parent[first] = start
    while queue:
        node = queue.popleft()
        if node == start:
            chain = [start]
            while True:
                node = parent[node]
                chain.append(node)
                if node == start:
                    return chain[::-1]
        for nxt in sorted(graph[node]):
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return None


def test_no_torch_import():
    code = (
        "import sys\n"
        "import tether.storage, tether.feedback.app, tether.feedback.cli, tether.feedback.api, tether.feedback.pages\n"
        "import tether.feedback.export, tether.feedback.quality, tether.feedback.loadtest\n"
        "import tether.feedback.worker, tether.feedback.model_jobs, tether.feedback.playground, tether.feedback.playground_routes\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", CHECKED_MODULES)
def test_each_module_imports_first(module: str):
    """Imported first in a fresh interpreter, each module loads: no import works only in one order."""
    result = _run(f"import {module}")
    assert result.returncode == 0, result.stderr


def test_the_import_graph_finds_imports_in_functions():
    graph = _import_graph()
    assert "tether.feedback.pages" in graph["tether.feedback.app"]
    assert "tether.feedback.app" in graph["tether.feedback.cli"]  # imported inside a function
    assert "tether.storage.store" in graph["tether.feedback.cli"]  # `from tether.storage.store import ...`
    assert "tether.storage" in graph["tether.feedback.api"]  # `from tether.storage import ...`: the package


def test_no_import_circle_through_feedback_or_storage():
    """No module of feedback or storage leads back to itself by imports, counting every import statement
    (in functions and under TYPE_CHECKING too); a package importing its own submodules is no circle."""
    graph = _import_graph()
    circles = [" -> ".join(chain) for name in CHECKED_MODULES if (chain := _path_back(graph, name))]
    assert not circles, "import circles:\n" + "\n".join(circles)
