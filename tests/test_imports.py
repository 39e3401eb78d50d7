"""The package's import graph: no module imports the CLI, and no import cycle (lazy imports
inside functions count: they are dependencies too)."""

import ast
import os

import boltzgen

PACKAGE = os.path.dirname(boltzgen.__file__)


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path: str, module: str) -> set:
    """boltzgen modules that ``module`` imports (absolute or relative, at any depth of its code)."""
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("boltzgen"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("boltzgen"):
                found.add(name)
                found.update(f"{name}.{a.name}" for a in node.names)
    return found


def _graph() -> dict:
    paths = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                paths[_module_name(os.path.join(root, f))] = os.path.join(root, f)
    graph = {}
    for module, path in paths.items():
        targets = {t for t in _imports(path, module) if t in paths and t != module}
        graph[module] = targets
    return graph


def test_no_module_imports_the_cli():
    importers = sorted(m for m, targets in _graph().items() if "boltzgen.cli" in targets)
    assert importers == []


def test_no_import_cycle():
    graph = _graph()
    # a package's __init__ re-exporting its own submodules is not a cycle of dependencies
    edges = {m: {t for t in ts if not (graph.get(t) is not None and t.startswith(m + "."))} for m, ts in graph.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []
