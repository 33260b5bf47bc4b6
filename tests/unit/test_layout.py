"""The layers point one way, checked on the real import graph (every import statement, at
module level or inside a function, read with `ast`):

  ground → data → backends → training → retrieval → strategies → scoring → harness
         → reporting → serving → cli

A module imports only from its own layer or the ones before it; toolkit reaches strategies
only through the registry; and no two modules import each other at load time."""

import ast
from pathlib import Path

from tests.conftest import REPO

ORDER = ["ground", "data", "backends", "training", "retrieval", "strategies", "scoring", "harness", "reporting",
         "serving", "cli"]
LAYER_OF = {  # modules, or packages (every module under them)
    "toolkit": "ground", "toolkit.errors": "ground", "toolkit.progress": "ground", "toolkit.cache": "ground",
    "toolkit.chat": "ground", "toolkit.config": "ground", "toolkit.parts": "ground", "toolkit.bundled": "ground", "toolkit.runs": "ground", "toolkit.records": "ground", "toolkit.prompts": "ground",
    "toolkit.data": "data",
    "toolkit.backends": "backends", "toolkit.models": "backends",
    "toolkit.training": "training",
    "toolkit.retrieval": "retrieval",
    "strategies": "strategies",
    "toolkit.scoring": "scoring",
    "toolkit.harness": "harness", "toolkit.preflight": "harness", "toolkit.resources": "harness",
    "toolkit.seeds": "harness", "toolkit.folds": "harness", "toolkit.cluster": "harness", "toolkit.suites": "harness", "toolkit.fields": "harness", "toolkit.starter": "harness",
    "toolkit.checks": "harness",
    "toolkit.reporting": "reporting",
    "toolkit.serving": "serving",
    "toolkit.cli": "cli",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYER_OF:
            return LAYER_OF[".".join(parts[:n])]
    return None


def imports(path: Path):
    """(imported module, line, at module level) of every import, except those under
    `if TYPE_CHECKING:` (never run)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno, id(node) in top
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno, id(node) in top


def project_files() -> list[Path]:
    return sorted([*(REPO / "toolkit").rglob("*.py"), *(REPO / "strategies").rglob("*.py")])


def test_every_module_has_a_layer():
    assert [module_name(p) for p in project_files() if layer(module_name(p)) is None] == []


def test_no_import_points_up_a_layer():
    bad = []
    for p in project_files():
        src = module_name(p)
        for mod, line, _ in imports(p):
            if not mod.startswith(("toolkit", "strategies")):
                continue
            if ORDER.index(layer(mod)) > ORDER.index(layer(src)):
                bad.append(f"{p.relative_to(REPO)}:{line} ({layer(src)}) imports {mod} ({layer(mod)})")
    assert bad == []


def test_toolkit_reaches_strategies_only_through_the_registry():
    bad = [f"{p.relative_to(REPO)}:{line} {m}" for p in (REPO / "toolkit").rglob("*.py") for m, line, _ in imports(p)
           if m.startswith("strategies") and m != "strategies.registry"]
    assert bad == []


def test_no_two_modules_import_each_other_at_load_time():
    graph: dict[str, set[str]] = {}
    names = {module_name(p) for p in project_files()}
    for p in project_files():
        graph[module_name(p)] = {m for m, _, at_top in imports(p) if at_top and m in names and m != module_name(p)}
    cycles = []

    def visit(node, stack, seen):
        for nxt in graph.get(node, ()):
            if nxt in stack:
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, stack + [nxt], seen)

    for start in sorted(graph):
        visit(start, [start], {start})
    assert cycles == []


def test_backends_know_nothing_of_suites_strategies_or_scoring():
    """Stricter than the layers: a backend turns requests into text or log-probabilities, and
    knows no suite, data split, strategy or metric."""
    bad = [f"{p.relative_to(REPO)}:{line} {m}" for p in (REPO / "toolkit" / "backends").rglob("*.py")
           for m, line, _ in imports(p)
           if m.startswith(("strategies", "toolkit.harness", "toolkit.scoring", "toolkit.reporting", "toolkit.resources",
                            "toolkit.data", "toolkit.suites"))]
    assert bad == []


def lazy_import_blocks(path: Path):
    """(first line, statements) of each run of consecutive import statements inside a function."""
    tree = ast.parse(path.read_text())
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    seen = set()
    for fn in funcs:
        for node in ast.walk(fn):
            for field in ("body", "orelse", "finalbody"):
                stmts = getattr(node, field, None)
                if not isinstance(stmts, list):  # a lambda's or an if-expression's body
                    continue
                block: list[ast.stmt] = []
                for st in [*stmts, None]:
                    if isinstance(st, (ast.Import, ast.ImportFrom)):
                        block.append(st)
                        continue
                    if block and id(block[0]) not in seen:
                        seen.add(id(block[0]))
                        yield block[0].lineno, block
                    block = []


def test_every_import_inside_a_function_says_why():
    """Imports sit at the top of a module, where they show the real graph. One inside a function
    keeps something heavy (torch, transformers, chromadb...) out of `--help`, `validate` and `ls`,
    or out of a module that does not always need it, and a comment on the line above says so."""
    bad = []
    for p in project_files():
        lines = p.read_text().splitlines()
        for first, block in lazy_import_blocks(p):
            above = lines[first - 2].strip() if first >= 2 else ""
            if not above.startswith("#") and not any("#" in lines[n.lineno - 1] for n in block):
                bad.append(f"{p.relative_to(REPO)}:{first} {ast.unparse(block[0])}")
    assert bad == [], "\n".join(bad)
