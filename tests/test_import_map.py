"""The package's import map is layered: no module imports, even lazily inside a function, a module that imports it
back (directly or through others). The one allowed loop is a registry's: ``algorithms.base`` and ``rewards.base``
load their built-in entries through ``_load_builtin`` when first asked, and those entries import the base back.
Imports under ``if TYPE_CHECKING:`` are annotations only and are not counted."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
REGISTRY_LOADERS = {"visalign.algorithms._load_builtin", "visalign.rewards._load_builtin"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST) -> list[str]:
    """Every ``visalign`` module name an import statement names, outside TYPE_CHECKING blocks."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("visalign"):
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names if a.name.startswith("visalign"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in _imported(ast.parse(path.read_text())):
            while target and target not in modules:  # `from pkg.mod import function` -> pkg.mod
                target = target.rpartition(".")[0]
            # a package's __init__ importing its own submodules, and a submodule importing its package, are one unit
            if target and target != name and not name.startswith(target + ".") and not target.startswith(name + "."):
                edges[name].add(target)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import loop, as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_map_has_no_loop_but_the_registries():
    edges = _graph()
    for source in edges:
        edges[source] -= REGISTRY_LOADERS  # the registries' lazy loading of their built-in entries
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_the_checker_finds_a_loop():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_the_engine_never_reaches_up_to_the_loop_or_the_cli():
    """Models, samplers, rewards, algorithms, rollouts and checkpoints are below the trainer and the commands."""
    edges = _graph()
    top = {"visalign.trainer", "visalign.cli", "visalign.export"} | {m for m in _modules() if ".commands" in m}
    lower = [m for m in _modules() if m.count(".") and m.split(".")[1] in
             ("models", "sampling", "rewards", "algorithms", "rollout", "checkpoint", "state_io", "seeding",
              "prompts", "run_setup", "optimization", "worlds", "eval")]
    assert not {(m, t) for m in lower for t in edges.get(m, set()) & top}
