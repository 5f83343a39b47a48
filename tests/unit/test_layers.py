"""The import graph: layers import downward only, no module imports itself in a circle, and only
``runtime/`` touches an engine SDK.

    __main__ → cli → run → services → runtime → plan/agents → config/cache → catalog → base
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "moat"

# Lower numbers are lower layers. Base modules (errors, constants, files, ownership, masking, …) are 0.
RANKS = {"catalog": 1, "config": 2, "cache": 2, "credentials": 2, "policy": 2, "plan": 3, "agents": 3, "runtime": 4,
         "services": 5, "proxy": 5, "run": 6, "cli": 7, "__main__": 8}
ENGINE_SDKS = ("docker", "kubernetes")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rank(module: str) -> int:
    parts = module.split(".")
    return RANKS.get(parts[1], 0) if len(parts) > 1 else 0


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import that runs (``if TYPE_CHECKING:`` blocks excluded).

    ``from package import submodule`` counts as importing the submodule only: a package whose
    ``__init__`` re-exports one of its modules is not in a cycle with the modules that import their
    siblings that way."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                yield f"{base}.{node.module}" if node.module else base, node.lineno
            elif node.module:
                submodules = [alias.name for alias in node.names if _is_module(f"{node.module}.{alias.name}")]
                if len(submodules) < len(node.names):
                    yield node.module, node.lineno
                for name in submodules:  # `from moat.run import reaper` imports a module
                    yield f"{node.module}.{name}", node.lineno


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (SRC / relative).with_suffix(".py").is_file() or (SRC / relative / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _ in imports(path):
            if target in modules and target != name:
                edges[name].add(target)
    return edges


def test_layers_import_downward_only() -> None:
    upward = []
    for path in SRC.rglob("*.py"):
        name = module_name(path)
        for target, line in imports(path):
            if target.startswith("moat.") and rank(target) > rank(name):
                upward.append(f"{path.relative_to(SRC)}:{line}: {name} imports {target}")
    assert upward == []


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt):], nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycles() -> None:
    assert find_cycles(graph()) == []


def test_the_cycle_finder_finds_cycles() -> None:
    # Guards the guard: the circle the run layer used to have (lifecycle ↔ teardown ↔ detach).
    edges = {"lifecycle": {"teardown"}, "teardown": {"detach"}, "detach": {"lifecycle"}, "other": {"lifecycle"}}
    [cycle] = find_cycles(edges)
    assert set(cycle) == {"lifecycle", "teardown", "detach"} and cycle[0] == cycle[-1]


def test_only_the_runtime_layer_imports_an_engine_sdk() -> None:
    found = []
    for path in SRC.rglob("*.py"):
        name = module_name(path)
        for target, line in imports(path):
            if target.split(".")[0] in ENGINE_SDKS and not name.startswith("moat.runtime."):
                found.append(f"{path.relative_to(SRC)}:{line}: {target}")
    assert found == []


def test_the_checker_sees_imports() -> None:
    # Guards the guard: the graph has the edges it must have.
    edges = graph()
    assert "moat.run.startup" in edges["moat.run.execution"]
    assert "moat.runtime.base" in edges["moat.run.pod"] or "moat.runtime.base" in edges["moat.run.startup"]
    assert "moat.plan.containers" in edges["moat.runtime.base"]
