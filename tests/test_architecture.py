"""The shape of the package (docs/ARCHITECTURE.md): imports go one way, and modules and functions stay
small enough to read in one sitting.

Every import counts, at module level and inside functions. Each module has a level; a module may
import only modules of its own level or below, and there must be no circle at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "alexnet"

#: Levels, bottom up (docs/ARCHITECTURE.md). A module is placed by the longest matching prefix.
LEVELS = {
    "alexnet": 0, "alexnet.errors": 0,
    "alexnet.runtime": 1,
    "alexnet.layers": 2,
    "alexnet.kernels": 3,
    "alexnet.models": 4, "alexnet.optim": 4, "alexnet.data": 4,
    "alexnet.config": 5, "alexnet.checkpoint": 5, "alexnet.summary": 5, "alexnet.export": 6,
    "alexnet.evaluate": 6,
    "alexnet.parallel": 7,
    "alexnet.step": 8,
    "alexnet.run": 9, "alexnet.checks": 9,
    "alexnet.train": 10,
    "alexnet.experiments": 11, "alexnet.tools": 11,
    "alexnet.cli_extra": 12, "alexnet.cli": 12, "alexnet.__main__": 13,
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every alexnet module `name` imports (a `from pkg import mod` counts as pkg.mod when mod is one)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:          # `import alexnet.models.fast as fast` and the like
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _level(name: str) -> int:
    prefixes = [p for p in LEVELS if name == p or name.startswith(p + ".")]
    assert prefixes, f"{name} has no level in tests/test_architecture.py (and docs/ARCHITECTURE.md)"
    return LEVELS[max(prefixes, key=len)]


def test_every_module_has_a_level():
    for name in MODULES:
        _level(name)


def test_no_module_imports_one_above_it():
    upward = [f"{m} (level {_level(m)}) imports {t} (level {_level(t)})"
              for m, targets in GRAPH.items() for t in targets if _level(t) > _level(m)]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_the_training_loop_does_not_import_the_tools():
    reach, todo = set(), ["alexnet.train"]
    while todo:
        m = todo.pop()
        for t in GRAPH[m] - reach:
            reach.add(t)
            todo.append(t)
    assert not [m for m in reach if m.startswith(("alexnet.tools", "alexnet.experiments", "alexnet.cli"))], reach


def test_modules_and_functions_are_small():
    big = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES:
            big.append(f"{name}: {len(lines)} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    big.append(f"{name}.{node.name}: {n} lines (at most {MAX_FUNCTION_LINES})")
    assert not big, "\n".join(big)


def test_every_cuda_test_carries_the_gpu_marker():
    """`pytest -m gpu` on the device machine must find every test that needs CUDA."""
    missing = []
    for path in sorted((SRC.parent / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_gpu = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                         and "gpu" in ast.unparse(n.value) for n in tree.body)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                marks = [ast.unparse(d) for d in node.decorator_list]
                needs = any("cuda" in m.lower() and "skipif(not" in m for m in marks)
                if needs and not module_gpu and not any(m.endswith("mark.gpu") or m == "gpu" for m in marks):
                    missing.append(f"{path.name}::{node.name}")
    assert not missing, missing
