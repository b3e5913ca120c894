"""The engine's layers run one way (``distill_core/__init__.py``): its import graph, imports inside
functions included, has no cycle; the UI imports only the engine's public modules and the engine
never imports streamlit."""
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


def test_the_engine_import_graph_has_no_cycle():
    g = graph()
    assert len(g) > 20 and g["distill_core.config"] >= {"distill_core.methods", "distill_core.initializers"}
    cycle = find_cycle(g)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_below_config_imports_it():
    above = {"distill_core.config", "distill_core.runs.run", "distill_core.runs.manager", "distill_core.runs.store", "distill_core.runs.recorder",
             "distill_core.runs.jobs", "distill_core.runs.workers", "distill_core.runs.estimates", "distill_core.cli", "distill_core.studies.bench",
             "distill_core.studies.sweep", "distill_core.studies.windows", "distill_core.studies.speed", "distill_core.__main__"}
    g = graph()
    below = [n for n in g if n not in above and "distill_core.config" in g[n]]
    assert below == []
    # and the value types at the bottom import no other engine module but their own tools
    for bottom in ("distill_core.synthetic", "distill_core.registry", "distill_core.paths", "distill_core.units", "distill_core.executor"):
        assert g[bottom] == set(), bottom
    assert g["distill_core.options"] == set()


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
