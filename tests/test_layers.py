"""The package's layers: a module imports only from its own layer or below, and nothing imports in a cycle.

Layers, lowest first (README "Code layout"); the benchmark package ``segloop_bench`` sits above the
product and the product never imports it.
"""

import ast
import os
from typing import Dict, Set

import pytest

LIB = os.path.join(os.path.dirname(__file__), "..", "lib")

LAYERS = {
    "segloop.errors": 1, "segloop.io": 1, "segloop.labels": 1, "segloop.validation": 1, "segloop.cpu_sharing": 1,
    "segloop.processes": 1, "segloop.ray_tasks": 1,
    "segloop.metrics": 2, "segloop.networks": 2, "segloop.dicom": 2, "segloop.transforms": 2, "segloop.planning": 2,
    "segloop.prompts": 3,
    "segloop.campaign": 4,
    "segloop.infers": 5, "segloop.trainers": 5, "segloop.scoring": 5, "segloop.activelearning": 5,
    "segloop.server": 6, "segloop.configs": 6,
    "segloop.cli": 7, "segloop.data": 7, "segloop.pacs": 7, "segloop.reporting": 7,
    "segloop_bench": 8,
}


def unit(module: str) -> str:
    """The layered unit a module belongs to: ``segloop.<package or core module>`` or ``segloop_bench``."""
    parts = module.split(".")
    return parts[0] if parts[0] == "segloop_bench" else ".".join(parts[:2])


def module_imports() -> Dict[str, Set[str]]:
    """{module: the segloop / segloop_bench modules it imports anywhere in its body}."""
    graph: Dict[str, Set[str]] = {}
    for package in ("segloop", "segloop_bench"):
        for folder, _, files in os.walk(os.path.join(LIB, package)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                module = os.path.relpath(path, LIB)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                with open(path) as f:
                    tree = ast.parse(f.read(), path)
                found = set()
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        found.update(a.name for a in node.names)
                    elif isinstance(node, ast.ImportFrom):
                        assert not node.level, f"{module}: relative import; write the absolute module path"
                        found.add(node.module)
                graph[module] = {m for m in found if m.split(".")[0] in ("segloop", "segloop_bench") and m != "segloop"}
    return graph


GRAPH = module_imports()


def test_every_module_has_a_layer():
    missing = sorted(m for m in GRAPH if m != "segloop" and unit(m) not in LAYERS)
    assert not missing, f"give these a layer in tests/test_layers.py (and the README): {missing}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "segloop"))
def test_no_upward_import(module):
    upward = sorted(m for m in GRAPH[module] if LAYERS[unit(m)] > LAYERS[unit(module)])
    assert not upward, f"{module} (layer {LAYERS[unit(module)]}) imports from a higher layer: {upward}"


def _cycle(edges: Dict[str, Set[str]]):
    state: Dict[str, int] = {}
    stack = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_between_modules():
    cycle = _cycle({m: {d for d in deps if d in GRAPH} for m, deps in GRAPH.items()})
    assert cycle is None, " -> ".join(cycle)


def test_no_import_cycle_between_packages():
    edges: Dict[str, Set[str]] = {}
    for module, deps in GRAPH.items():
        edges.setdefault(unit(module), set()).update(unit(d) for d in deps if unit(d) != unit(module))
    cycle = _cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """The checks above can fail: a campaign module importing configs, and a two-package loop."""
    assert LAYERS[unit("segloop.configs.options")] > LAYERS[unit("segloop.campaign.loop")]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
