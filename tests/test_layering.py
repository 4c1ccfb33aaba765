"""The layering of the code, enforced: formats <- engine <- commands, no import cycles, small modules.

The import graph is read from the source with `ast` (module-level and function-local imports alike),
so a lazy import cannot hide a cycle or a forbidden dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("formats", "wsncli")
MAX_MODULE_LINES = 420

# Within the engine: which subpackages each one may import (besides itself and the engine's top).
ENGINE_ALLOWED = {
    "nn": set(),
    "data": set(),
    "store": {"nn", "data"},
    "training": {"nn", "data", "store", "parallel"},
    "usecases": {"nn", "data", "store", "parallel", "training"},
    "parallel": {"nn"},
}
ENGINE_TOP = {"wsncli.engine", "wsncli.engine.limits", "wsncli.engine.runtime", "wsncli.engine.journal"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(name, path) if m in modules and m != name} for name, path in modules.items()}


def _external(name: str) -> set[str]:
    return {m.split(".")[0] for m in _imports(name, _modules()[name])}


def test_no_import_cycles(graph):
    # Ignore edges to a package's own __init__ from inside it (importing the package namespace).
    edges = {a: {b for b in bs if not a.startswith(b + ".")} for a, bs in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_formats_needs_only_numpy_bitarray_and_the_stdlib(graph):
    allowed = {"numpy", "bitarray", "formats", "__future__"} | set(sys.stdlib_module_names)
    for name in graph:
        if name.startswith("formats"):
            assert _external(name) <= allowed, f"{name} imports {_external(name) - allowed}"


def test_engine_never_imports_the_command_layer(graph):
    for name in graph:
        if name.startswith("wsncli.engine"):
            bad = _external(name) & {"typer", "rich", "click"}
            bad |= {
                m
                for m in graph[name]
                if m.startswith(("wsncli.commands", "wsncli.app", "wsncli.cli", "wsncli.interrupts"))
            }
            assert not bad, f"{name} imports {sorted(bad)}"


def test_engine_subpackages_depend_only_downwards(graph):
    for name, deps in graph.items():
        parts = name.split(".")
        if len(parts) < 4 or parts[:2] != ["wsncli", "engine"]:
            continue
        own = parts[2]
        assert own in ENGINE_ALLOWED, f"engine subpackage {own!r} has no layering rule"
        for dep in deps:
            dparts = dep.split(".")
            if dparts[:2] != ["wsncli", "engine"] or dep in ENGINE_TOP or dparts[2] == own:
                continue
            assert dparts[2] in ENGINE_ALLOWED[own], f"{name} (engine.{own}) imports {dep}"


def test_modules_stay_small():
    for name, path in _modules().items():
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines (limit {MAX_MODULE_LINES}): split it"


BLOCK = """
import sys, importlib, pkgutil
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, Block())
import {package}
for mod in pkgutil.walk_packages({package}.__path__, "{package}."):
    importlib.import_module(mod.name)
print("ok")
"""


@pytest.mark.parametrize(
    ("package", "blocked"), [("wsncli.engine", {"typer", "rich", "click"}), ("formats", {"torch", "wsncli"})]
)
def test_layer_imports_with_the_layers_above_blocked(package, blocked):
    code = BLOCK.format(package=package, blocked=blocked)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_ruff_is_clean():
    ruff = Path(sys.executable).with_name("ruff")
    assert ruff.exists(), "ruff is not installed: pip install -e '.[test]'"
    result = subprocess.run(
        [str(ruff), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run(
        [str(ruff), "format", "--check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


# What a command may take from the engine besides its use case (wsncli.engine.usecases): names and
# limits for parsing, the journal, the arch-module import, callback types; and three helpers still
# reached directly (listed so that no new one creeps in).
COMMAND_ENGINE_ALLOWED = {
    "wsncli.engine.limits",
    "wsncli.engine.journal",
    "wsncli.engine.nn.user",
    "wsncli.engine.nn.models",  # parse_hidden
    "wsncli.engine.training.loop",  # EpochStats, TrainCallbacks (progress callbacks)
    "wsncli.engine.training.snapshot",  # snapshot_path, for train-task's interrupt hint
    "wsncli.engine.store.paths",  # resolve, for train-task's interrupt hint
    "wsncli.engine.store.container",  # FORMAT_NAME, for inspect's output
}


def test_commands_reach_the_engine_through_use_cases(graph):
    for name, deps in graph.items():
        if not name.startswith(("wsncli.commands", "wsncli.app")):
            continue
        engine = {d for d in deps if d.startswith("wsncli.engine.") and not d.startswith("wsncli.engine.usecases")}
        modules = {d for d in engine if d in _modules()}
        assert modules <= COMMAND_ENGINE_ALLOWED, f"{name} reaches into {sorted(modules - COMMAND_ENGINE_ALLOWED)}"
