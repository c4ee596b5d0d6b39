"""The package's layering, read from the source (nothing is imported):

- no import cycles between halign modules at module top level (a cycle breaks as soon as someone
  reorders imports, and it means two modules are really one);
- align/, rewards/ and data_gen/ never import recipes/ (recipes orchestrate the stages, not the reverse),
  not even inside a function;
- no module imports another module's private (`_name`) helper: a shared helper is public, in its home.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Source folder -> installed package (pyproject.toml's package-dir).
PACKAGES = {"align": "halign.align", "rewards": "halign.rewards", "rewards/judges": "halign.rewards.judges",
            "data_gen": "halign.data_gen", "recipes": "halign.recipes"}
LOWER_LAYERS = ("halign.align", "halign.rewards", "halign.data_gen")


def halign_modules() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


MODULES = halign_modules()


def _top_level_nodes(tree: ast.Module):
    """Statements that run when the module is imported: the module body and class bodies, also inside
    module-level if/try, but not function bodies nor `if TYPE_CHECKING:` blocks."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                stack.append(child)


def imports_of(node: ast.AST) -> list[tuple[str, str | None]]:
    """(imported halign module, imported name or None) for one import statement."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names if alias.name.startswith("halign.")]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("halign"):
        out = []
        for alias in node.names:
            submodule = f"{node.module}.{alias.name}"
            # `from halign.data_gen import pairs` imports a module; `from halign.data_gen.io import x` a name.
            out.append((submodule, None) if submodule in MODULES else (node.module, alias.name))
        return out
    return []


def import_graph(top_level_only: bool) -> dict[str, list[tuple[str, str | None, int]]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = _top_level_nodes(tree) if top_level_only else ast.walk(tree)
        graph[module] = [(target, name, node.lineno) for node in nodes for target, name in imports_of(node)]
    return graph


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None; depth-first search with colours."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(edges):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_graph_sees_the_package():
    graph = import_graph(top_level_only=True)
    assert "halign.recipes.runner" in graph and "halign.rewards.judges.cli" in graph
    # A known edge, so that a parser that silently found nothing cannot pass the tests below.
    assert any(t == "halign.data_gen.io" for t, _, _ in graph["halign.rewards.judges.cli"])


def test_no_import_cycles_at_module_top_level():
    graph = import_graph(top_level_only=True)
    edges = {m: {t for t, _, _ in targets if t in MODULES and t != m} for m, targets in graph.items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lower_layers_never_import_recipes():
    upward = [f"{m}:{line} imports {t}" for m, targets in import_graph(top_level_only=False).items()
              if m.startswith(LOWER_LAYERS) for t, _, line in targets if t.startswith("halign.recipes")]
    assert not upward, "align/, rewards/ and data_gen/ must not depend on recipes/: " + "; ".join(upward)


def test_no_private_names_imported_across_modules():
    private = [f"{m}:{line} imports {name} from {t}" for m, targets in import_graph(top_level_only=False).items()
               for t, name, line in targets
               if name is not None and name.startswith("_") and not name.startswith("__") and t != m]
    assert not private, "shared helpers must be public in their home module: " + "; ".join(private)


def test_no_import_cycles_even_through_imports_inside_functions():
    """Lazy imports (inside a function) keep start-up light, but a cycle through them still means two
    modules that each need the other: the helper they share belongs in a third."""
    graph = import_graph(top_level_only=False)
    edges = {m: {t for t, _, _ in targets if t in MODULES and t != m} for m, targets in graph.items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle (counting imports inside functions): " + " -> ".join(cycle)


# Every layer's configs, flags and overrides are read through these (SampleConfig and PairsConfig in data_gen/,
# TrainConfig in align/, the recipe sections in recipes/), so they sit below every other halign module.
CONFIG_HELPERS = ("halign.data_gen.fields", "halign.data_gen.overrides")


def test_config_helpers_import_no_halign_module():
    graph = import_graph(top_level_only=False)
    assert set(CONFIG_HELPERS) <= set(graph)
    upward = [f"{m}:{line} imports {t}" for m in CONFIG_HELPERS for t, _, line in graph[m]]
    assert not upward, "the config helpers must stay at the bottom layer: " + "; ".join(upward)
