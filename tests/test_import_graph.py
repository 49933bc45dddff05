"""The project's import graph is a layered DAG: data flows one way.

Every import counts, also those inside functions (a cycle hidden in a function is still a cycle) and
``importlib.import_module("...")`` with a literal name; reaching a submodule only as an attribute of an
imported package (``import sources; sources.session...``) is not seen, and the project does not do it. Packages
are ranked sources < stats < cooc, subspaces < probes < interventions < reports < experiments (stats, which
knows nothing of models, sits below cooc so that every family is BH-corrected by one function); a module may
import its own package and lower ranks only, and no set of modules may import each other in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"sources": 0, "stats": 1, "cooc": 2, "subspaces": 2, "probes": 3, "interventions": 4, "reports": 5,
        "experiments": 6}


def modules() -> dict[str, Path]:
    out = {}
    for package in RANK:
        for f in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


def _target(name: str, known: dict) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(known: dict[str, Path]) -> nx.DiGraph:
    """module -> the project modules it imports (anywhere in its file; relative imports resolved)."""
    g = nx.DiGraph()
    g.add_nodes_from(known)
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                targets = [str(node.args[0].value)]  # importlib.import_module("pkg.mod") counts too
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for t in targets:
                t = _target(t, known)
                if t is not None and t != name:
                    g.add_edge(name, t)
    return g


def cycles(g: nx.DiGraph) -> list[list[str]]:
    return [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]


def layer_violations(g: nx.DiGraph) -> list[tuple[str, str]]:
    return [(a, b) for a, b in g.edges
            if a.split(".")[0] != b.split(".")[0] and RANK[b.split(".")[0]] >= RANK[a.split(".")[0]]]


@pytest.fixture(scope="module")
def graph():
    return import_graph(modules())


def test_there_is_no_import_cycle_not_even_inside_functions(graph):
    assert cycles(graph) == []


def test_packages_import_only_their_own_and_lower_layers(graph):
    assert layer_violations(graph) == []


def test_the_walk_sees_function_level_imports_and_the_checks_can_fail(graph, tmp_path):
    assert graph.has_edge("experiments.steer", "experiments.run") and graph.has_edge("sources.session", "sources.saes")
    assert graph.has_edge("experiments.probe", "probes.stage")  # imported inside probe_stage()
    broken = graph.copy()
    broken.add_edge("sources.fingerprint", "sources.models")  # models imports fingerprint: a cycle
    broken.add_edge("cooc.run", "probes.stage")  # a lower layer importing a higher one
    broken.add_edge("cooc.run", "subspaces.subspace")  # a layer importing a sibling of its own rank
    assert cycles(broken) == [["sources.fingerprint", "sources.models"]]
    assert set(layer_violations(broken)) == {("cooc.run", "probes.stage"), ("cooc.run", "subspaces.subspace")}
