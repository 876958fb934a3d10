"""The package's layout, from its own imports: no import cycle, a bounded height, and lazy imports of
its own modules only in the command line (where they keep ``--help`` fast)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "siammae"
MAX_FLOORS = 8


def modules() -> dict:
    """Module name -> its file, for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict) -> list:
    """(imported module, nested in a function or class?) for each of the package's own modules that
    ``name`` imports; ``if TYPE_CHECKING:`` blocks never run and do not count."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            parts = target.split(".")
            module = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in known), None)
            if module and module != name:
                found.append((module, node.col_offset > 0))
    return found


def graph():
    known = modules()
    edges = {m: set() for m in known}
    nested = []
    for name, path in known.items():
        for target, inner in imports(name, path, known):
            edges[name].add(target)
            if inner:
                nested.append(f"{name} -> {target}")
    return edges, nested


def test_no_import_cycle_and_at_most_eight_floors():
    edges, _ = graph()
    floors, visiting = {}, []

    def floor(module):  # depth-first: a module met again while its own imports are open is a cycle
        if module in floors:
            return floors[module]
        assert module not in visiting, "import cycle: " + " -> ".join(visiting[visiting.index(module) :] + [module])
        visiting.append(module)
        floors[module] = 1 + max((floor(t) for t in edges[module]), default=0)
        visiting.pop()
        return floors[module]

    top = max(floor(m) for m in edges)
    assert top <= MAX_FLOORS, f"{top} floors: " + ", ".join(m for m, f in floors.items() if f == top)


def test_only_the_command_line_imports_its_own_modules_late():
    _, nested = graph()
    outside = [n for n in nested if not n.startswith("siammae.cli")]
    assert not outside, f"imports of siammae modules inside functions (hoist them, or fix the layering): {outside}"
