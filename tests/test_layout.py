"""The layers point one way: toolkit reaches strategies only through the registry, and the
request layer (backends) knows nothing of suites, strategies or scoring."""

import ast

from tests.conftest import REPO


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_toolkit_reaches_strategies_only_through_the_registry():
    bad = [(p.relative_to(REPO), m) for p in (REPO / "toolkit").rglob("*.py") for m in imports(p)
           if m.startswith("strategies") and m != "strategies.registry"]
    assert bad == []


def test_backends_know_nothing_of_suites_strategies_or_scoring():
    bad = [(p.relative_to(REPO), m) for p in (REPO / "toolkit" / "backends").rglob("*.py") for m in imports(p)
           if m.startswith(("strategies", "toolkit.harness", "toolkit.scoring", "toolkit.reporting",
                            "toolkit.resources", "toolkit.data"))]
    assert bad == []
