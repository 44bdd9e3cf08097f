"""The package's import structure: no cycles, and the layers import one way.

Reads every module's ``import`` statements with :mod:`ast` (top level and inside functions, since a
function-level import is still a dependency) and checks them against the layer order of
``docs/architecture.md``. Also imports every module alone in a fresh interpreter, which catches an
import that only works because another module happened to be imported first.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "graphscale"

# Lower layers never import upper ones. The base modules (errors, atomic, _features, saved_bytes, _procs,
# the version) may be imported from anywhere and import nothing of graphscale above them.
LAYERS = ["base", "ops", "data", "sampling", "nn", "memory", "gntk", "train", "bench", "cli"]
BASE = {"graphscale", "graphscale.errors", "graphscale.atomic", "graphscale._features", "graphscale.saved_bytes",
        "graphscale._procs"}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            # the longest known module that the target names (a from-import of a function maps to its module)
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("graphscale"):
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(path, name, known) for name, path in mods.items()}


def _layer(name: str) -> str:
    if name in BASE:
        return "base"
    part = name.split(".")[1]
    return "cli" if part == "__main__" else part


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if m.startswith(d + "."):
                continue  # a submodule using its own package's re-exports (the package imports it back)
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = _graph()
    # A package __init__ re-exports its submodules: edges package -> own submodule are not dependencies
    # of the package's callers on each other, so drop them before looking for cycles.
    pruned = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    cycle = _cycle(pruned)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_detector_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_layers_import_downwards_only():
    order = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for mod, deps in _graph().items():
        lm = _layer(mod)
        for d in deps:
            ld = _layer(d)
            if lm == ld or ld not in order or lm not in order:
                continue
            if order[ld] > order[lm]:
                bad.append(f"{mod} ({lm}) imports {d} ({ld})")
    assert not bad, "imports against the layer order " + " < ".join(LAYERS) + ":\n" + "\n".join(sorted(bad))


_ALONE = r"""
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    # forget every graphscale module (third-party packages stay loaded: they are not under test)
    for key in [k for k in sys.modules if k == "graphscale" or k.startswith(("graphscale.", "graphscale_triton"))]:
        del sys.modules[key]
    try:
        importlib.import_module(name)
    except BaseException:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone():
    # each module imported with no other graphscale module loaded before it: catches an import that only
    # works because another module happened to be imported first
    mods = sorted(m for m in _modules() if not m.endswith("__main__"))
    proc = subprocess.run([sys.executable, "-c", _ALONE, *mods], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
