"""The package's layering, as the README's Layout section states it: no module imports from a layer above its
own (function-local imports included), the library never imports the demo, and module-level imports form no
cycle. Read from the source with ``ast``, so a new import that breaks the rule fails here, not in review."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Lowest first; a package may import its own layer and those below.
LAYER = {"errors": 0, "outputs": 0, "plugins": 0, "tokenizer": 1, "transforms": 1, "models": 2, "data": 2,
         "__init__": 2, "eval": 3, "train": 4, "plan": 5, "search": 5, "cli": 6, "__main__": 7, "evaclip_demo": 8}


def _modules():
    for top in ("evaclip", "evaclip_demo"):
        for f in sorted((REPO / top).rglob("*.py")):
            yield ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"), f


def _part(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "evaclip_demo":
        return "evaclip_demo"
    return "__init__" if len(parts) == 1 else parts[1]


def _imports(tree: ast.AST, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from evaclip.models import checkpoint` may name a module
                out.add(f"{node.module}.{alias.name}")
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.split(".")[0] in ("evaclip", "evaclip_demo")}


def test_no_import_reaches_a_higher_layer_and_the_library_never_imports_the_demo():
    bad = []
    for module, path in _modules():
        here = _part(module)
        for target in _imports(ast.parse(path.read_text()), top_level_only=False):
            there = _part(target)
            if there not in LAYER:  # `from evaclip import X` where X is a name, not a package
                continue
            if LAYER[there] > LAYER[here]:
                bad.append(f"{module} -> {target}")
    assert not bad, "imports from a higher layer:\n" + "\n".join(sorted(bad))


def test_module_level_imports_have_no_cycle():
    modules = dict(_modules())
    # A module's own parent packages are initialised before it whatever it imports: not an edge it chose.
    graph = {m: {t for t in _imports(ast.parse(p.read_text()), top_level_only=True)
                 if t in modules and t != m and not m.startswith(t + ".")}
             for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack + [m, n]
            if n not in state and (cycle := visit(n, stack + [m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m, [])
            assert cycle is None, "import cycle: " + " -> ".join(cycle[cycle.index(cycle[-1]):])
