"""The engine's layers run one way (``distill_core/__init__.py``): every module has a layer, none
imports from a layer above its own, and the import graph (imports inside functions and under
TYPE_CHECKING included) has no cycle; the UI imports only the engine's public modules and the
engine never imports streamlit."""
from __future__ import annotations

import ast
from pathlib import Path

import distill_core

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "distill_core"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ENGINE.rglob("*.py")}

# the layers, bottom to top: a folder's modules share its rank, the package's own modules are ranked one by one
FOLDERS = {"data": 1, "nets": 2, "evaluation": 3, "methods": 4, "initializers": 5, "runs": 7, "studies": 8}
TOP = {
    "distill_core": 0, "registry": 0, "options": 0, "synthetic": 0, "paths": 0, "units": 0, "threads": 0, "executor": 0, "artifacts": 0,
    "config": 6, "tiers": 6,
    "cli": 9, "__main__": 9,
}


def layer(module: str) -> int | None:
    """The rank of an engine module (``distill_core.runs.store``: 7), None for one of no layer."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in FOLDERS):
        return FOLDERS.get(parts[1])
    return TOP.get(parts[-1])


def imports(path: Path) -> set[str]:
    """Every distill_core module ``path`` imports, at any depth of its code (functions included);
    ``from package import submodule`` counts as the submodule."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("distill_core")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distill_core"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return out


def graph() -> dict[str, set[str]]:
    return {name: imports(path) - {name} for name, path in MODULES.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def upward(g: dict[str, set[str]], rank) -> list[str]:
    """Every import from a layer above the importer's own, as "importer (rank) -> imported (rank)"."""
    return sorted(f"{a} ({rank(a)}) -> {b} ({rank(b)})" for a, deps in g.items() for b in deps if rank(b) > rank(a))


def test_the_engine_import_graph_has_no_cycle():
    g = graph()
    assert len(g) > 20 and g["distill_core.config"] >= {"distill_core.methods", "distill_core.initializers"}
    cycle = find_cycle(g)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_engine_module_has_a_layer():
    assert [m for m in sorted(MODULES) if layer(m) is None] == [], "rank them in FOLDERS or TOP (and in distill_core/__init__.py)"


def test_no_engine_module_imports_from_a_layer_above_its_own():
    assert upward(graph(), layer) == []


def test_the_layer_check_finds_an_upward_import():
    ranks = {"low": 0, "high": 1}
    assert upward({"low": {"high"}, "high": {"low"}}, ranks.get) == ["low (0) -> high (1)"]
    assert upward({"high": {"low"}, "low": set()}, ranks.get) == []
    # with the engine's own ranks: options' old type-only import of Data, and a network reading the config
    g = {"distill_core.options": {"distill_core.data.datasets"}, "distill_core.nets.networks": {"distill_core.config", "distill_core.registry"}}
    assert upward(g, layer) == [
        "distill_core.nets.networks (2) -> distill_core.config (6)",
        "distill_core.options (0) -> distill_core.data.datasets (1)",
    ]
    assert (layer("distill_core"), layer("distill_core.data"), layer("distill_core.runs.manager"), layer("distill_core.__main__")) == (0, 1, 7, 9)
    assert layer("distill_core.newfolder.module") is None and layer("distill_core.newmodule") is None


def test_the_bottom_imports_no_other_engine_module_but_its_own_tools():
    g = graph()
    for bottom in ("distill_core.synthetic", "distill_core.registry", "distill_core.paths", "distill_core.units", "distill_core.executor",
                   "distill_core.options"):
        assert g[bottom] == set(), bottom


def test_the_ui_imports_only_public_engine_modules_and_the_engine_no_streamlit():
    public = {f"distill_core.{m}" for m in distill_core.PUBLIC}
    for path in [ROOT / "app.py", *sorted((ROOT / "ui").glob("*.py")), *sorted((ROOT / "views").glob("*.py"))]:
        used = imports(path)
        assert used <= public, f"{path.name} imports {sorted(used - public)}"
    for path in MODULES.values():
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(x.split(".")[0] == "streamlit" for x in names), path


def test_no_file_edits_sys_path():
    for path in [ROOT / "app.py", *ROOT.glob("ui/*.py"), *ROOT.glob("views/*.py"), *ENGINE.rglob("*.py")]:
        assert "sys.path" not in path.read_text(), path
