"""The layering ARCHITECTURE.md describes, checked on the source: every import (module level or
inside a function) goes to the same layer or one below, and no set of files imports itself in a
cycle. ``medtune --help`` stays free of torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Lowest first; a module may import its own layer and the layers below it, never above.
LAYERS = [
    ("medtune.errors", "medtune.files", "medtune.llm_client", "medtune.config"),
    ("medtune.data", "medtune.models"),
    ("medtune.inference", "medtune.evaluation", "medtune.export"),
    ("medtune.recipes", "medtune.serving"),
    ("medtune.demo", "medtune.cli", "medtune.__main__"),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The medtune modules ``name`` imports anywhere in its file (not the parent packages Python
    runs on the way, which import nothing but their own children)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            candidates = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and candidate.startswith("medtune"):
                targets.add(candidate)
                break  # `from pkg import module` is an edge to the module, not also to pkg
    return targets


def layer(name: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return rank
    return len(LAYERS)  # medtune/__init__.py: the public facade on top


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer(m) == len(LAYERS) and m != "medtune"] == []


def test_layers_import_only_downward():
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in targets
              if a != "medtune" and layer(b) > layer(a)]
    assert upward == []


def test_no_import_cycles():
    assert find_cycle(graph()) is None


def test_cycle_finder_finds_a_planted_cycle():
    edges = graph()
    edges["medtune.errors"] = edges["medtune.errors"] | {"medtune.cli.main"}
    cycle = find_cycle(edges)
    assert cycle and cycle[0] == cycle[-1] and "medtune.errors" in cycle


def test_help_imports_no_torch():
    code = ("import sys\nfrom medtune.cli.main import build_parser\nbuild_parser().format_help()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
