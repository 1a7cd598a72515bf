"""The package's architecture, checked from its source: no import circles, arrows point down, modules stay small.

Every ``import`` in ``hf_rmod/`` counts (module level and inside functions: a lazy import is still an arrow),
except those under ``if TYPE_CHECKING:``. Importing ``hf_rmod.a.b`` also runs ``hf_rmod/a/__init__.py``, so it
is an arrow to ``hf_rmod.a`` too, unless ``hf_rmod.a`` is a package the importing module belongs to (it is already
running); an import that names such a package (``from . import x``, ``x`` not a submodule) is an arrow to it. The
root package ``hf_rmod`` is left out (its ``__init__`` imports lazily, by name, nothing at import time).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_rmod"
ROOT = "hf_rmod"

#: Lower floors that must never reach up into the pipelines (``experiments``) or the command line (``cli``).
#: ``training`` / ``evaluation`` are the deprecated re-export modules of the pipelines: they point up by design.
CORE = ("hf_rmod.solver", "hf_rmod.config", "hf_rmod.generation", "hf_rmod._generation_plumbing",
        "hf_rmod.logits_process", "hf_rmod.scoring", "hf_rmod.metrics", "hf_rmod.value_model",
        "hf_rmod.modeling_value_head", "hf_rmod.configuration_value_head", "hf_rmod.reward_values",
        "hf_rmod._hub", "hf_rmod._utils", "hf_rmod.defaults", "hf_rmod.rewards", "hf_rmod.baselines")
UPPER = ("hf_rmod.experiments", "hf_rmod.cli")
MAX_LINES, EXPLAIN_ABOVE = 700, 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@functools.cache
def _root_exports() -> dict[str, str]:
    """``hf_rmod.__init__._EXPORTS``: public name -> the submodule its lazy ``__getattr__`` imports."""
    for node in ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8")).body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        target = targets[0] if targets else None
        if isinstance(target, ast.Name) and target.id == "_EXPORTS":
            return ast.literal_eval(node.value)
    raise AssertionError("hf_rmod/__init__.py has no _EXPORTS table")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (not run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The hf_rmod modules ``name`` imports (parents of each included; the root and ``name`` itself excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree)
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names if a.name.split(".")[0] == ROOT}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != ROOT:
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{source}.{alias.name}"
                if source == ROOT and alias.name in _root_exports():  # the root's lazy re-exports
                    sub = f"{ROOT}.{_root_exports()[alias.name]}"
                targets.add(sub if sub in modules else source)
    own_packages = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}  # already running
    closed = set(targets)
    for target in targets:
        parts = target.split(".")
        closed |= {".".join(parts[:i]) for i in range(2, len(parts))} - own_packages
    return {t for t in closed if t in modules and t != name and t != ROOT}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "hf_rmod.solver" in graph["hf_rmod.config"]  # module level, relative, into a package
    assert "hf_rmod.experiments.demo" in graph["hf_rmod.cli._decode"]  # inside a function, two dots up
    assert "hf_rmod.experiments" in graph["hf_rmod.cli._decode"]  # the parent package runs too
    assert "hf_rmod.cli" not in graph["hf_rmod.cli._decode"]  # ... unless it is the importer's own
    assert _root_exports()["solve_weights"] == "solver"  # `from hf_rmod import solve_weights` -> hf_rmod.solver


def test_find_cycles_reports_a_circle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert find_cycles(import_graph()) == []


def test_core_never_imports_the_pipelines_or_the_cli():
    up = {(m, t) for m, targets in import_graph().items() if _within(m, CORE)
          for t in targets if _within(t, UPPER)}
    assert up == set(), "core modules import experiments/cli (move what they need down): " + repr(sorted(up))


@pytest.mark.parametrize("name, path", sorted(_modules().items()))
def test_module_size(name, path):
    source = path.read_text(encoding="utf-8")
    lines = source.count("\n")
    assert lines <= MAX_LINES, f"{name}: {lines} lines > {MAX_LINES}; split it by concern"
    if lines > EXPLAIN_ABOVE:
        doc = ast.get_docstring(ast.parse(source)) or ""
        assert "Why one module" in doc, f"{name}: {lines} lines > {EXPLAIN_ABOVE}; say why in a 'Why one module' " \
                                        "paragraph of its docstring, or split it"
