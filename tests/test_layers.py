"""The direction of imports (docs/architecture.md section 4): no module imports one from a layer above it, and no
import circle exists anywhere in the package. Function-level and TYPE_CHECKING imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# lowest first; a module may import from its own layer or any layer below it
LAYERS = [
    {"__init__", "errors", "types", "precision", "ops", "html", "tracking"},  # __init__: the version only
    {"config", "stages"},
    {"run"},
    {"losses", "rl"},
    {"models", "data"},
    {"rollout"},
    {"eval"},
    {"trainers"},
    {"redteam", "constitutional"},
    {"storage"},
    {"feedback"},
    {"pipeline", "loop", "personalize", "cli", "__main__"},
]
# the labelling app asks the rollout layer for samples (feedback/service.py, imported only when sampling)
ALLOWED_UPWARD = {("feedback", "rollout")}


def module_graph(root: Path = SRC) -> dict[str, set[str]]:
    """{module: modules of the package it imports}, from the source (function-level imports included)."""
    files = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = f
    graph: dict[str, set[str]] = {m: set() for m in files}
    for m, f in files.items():
        package = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[m] |= {n for n in names if n in files and n != m}
    return graph


def top(module: str) -> str:
    """The package (or top-level module) of the tether package that `module` belongs to."""
    return module.split(".")[1] if module.count(".") else "__init__"


def layer_of(module: str) -> int:
    top_name = top(module)
    for i, names in enumerate(LAYERS):
        if top_name in names:
            return i
    raise AssertionError(f"{module}: its package {top_name!r} has no layer in tests/test_layers.py (and docs/architecture.md)")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_from_a_layer_above_it():
    graph = module_graph()
    upward = [f"{m} -> {t}" for m, targets in graph.items() for t in targets
              if layer_of(t) > layer_of(m) and (top(m), top(t)) not in ALLOWED_UPWARD]
    assert not upward, "imports running upward:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    # a package's __init__ re-exporting its modules is not a circle of the code
    graph = {m: {t for t in ts if not (m.count(".") == 1 and t.startswith(m + "."))} for m, ts in module_graph().items()}
    assert not cycles(graph)


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path):
    """Both checks can fail: a planted upward import and a planted circle are found."""
    pkg = tmp_path / "tether"
    (pkg / "models").mkdir(parents=True)
    (pkg / "trainers").mkdir()
    (pkg / "models" / "a.py").write_text("def f():\n    from tether.trainers.b import g\n")
    (pkg / "trainers" / "b.py").write_text("from tether.models.a import f\n")
    graph = module_graph(tmp_path)
    assert "tether.trainers.b" in graph["tether.models.a"] and layer_of("tether.trainers.b") > layer_of("tether.models.a")
    assert cycles(graph) == [["tether.models.a", "tether.trainers.b"]]
