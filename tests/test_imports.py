"""No import cycles among gat/, sweeps/ and analysis/ modules, counting imports inside functions
too: a cycle hidden behind a lazy import still ties two floors together."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("contract", "gat", "sweeps", "analysis")


def module_names() -> dict[str, Path]:
    names = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (`from pkg import sub` counts as importing pkg.sub)."""
    names = module_names()
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{alias.name}" for alias in node.names} & names.keys()
                targets = subs or {node.module}
            elif isinstance(node, ast.Import):
                targets = {alias.name for alias in node.names}
            else:
                continue
            graph[name] |= {t for t in targets if t in names and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    assert "contract.config" in graph and graph["contract.config"], "the scan found no imports: it is broken"
    assert cycles(graph) == []


def test_no_test_module_imports_another():
    # Shared helpers live in conftest.py (fixtures, trainer data) and run_folders.py; a test module
    # imported by another runs its module-level code twice and hides what is shared.
    tests = Path(__file__).resolve().parent
    offenders = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}:{node.lineno}: {name}" for name in names
                          if name.split(".")[-1].startswith("test_")]
    assert not offenders, "\n".join(offenders)


# --- data flows one way: config -> plan -> job -> run folder -> table -> fit -> forecast ---

def sweeps_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of each import of `sweeps` (or a module under it) in `source`, inside
    functions too, and of each `importlib.import_module("sweeps...")` with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        else:
            continue
        found += [(node.lineno, name) for name in names if name == "sweeps" or name.startswith("sweeps.")]
    return found


def analysis_importing_sweeps(root: Path) -> list[str]:
    """One line per import of sweeps by a module under `root`/analysis, naming the module."""
    offenders = []
    for path in sorted((root / "analysis").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        offenders += [f"{module} ({path.relative_to(root)}:{line}) imports {name}"
                      for line, name in sweeps_imports(path.read_text())]
    return offenders


def test_the_sweeps_scan_finds_every_spelling(tmp_path):
    assert sweeps_imports("import sweeps.plan\n") == [(1, "sweeps.plan")]
    assert sweeps_imports("def f():\n    from sweeps.costs import model_stats\n") == [(2, "sweeps.costs")]
    assert sweeps_imports("from sweeps import spec\nimportlib.import_module('sweeps.spec')\n") == [
        (1, "sweeps"), (2, "sweeps.spec")]
    assert sweeps_imports('"""Reads what sweeps.plan planned."""\nimport sweepstakes\nfrom contract import config\n') == []
    (tmp_path / "analysis" / "sub").mkdir(parents=True)
    (tmp_path / "analysis" / "sub" / "bad.py").write_text("import json\n\ndef f():\n    from sweeps import plan\n")
    assert analysis_importing_sweeps(tmp_path) == ["analysis.sub.bad (analysis/sub/bad.py:4) imports sweeps"]


def test_analysis_imports_no_sweeps():
    """The analysis reads what the runs wrote (run folders, a study's manifest, the contract),
    never the sweep engine that planned them."""
    assert (ROOT / "analysis" / "forecast.py").is_file(), "the scan found no analysis modules: it is broken"
    offenders = analysis_importing_sweeps(ROOT)
    assert not offenders, ("analysis/ must not import sweeps (data flows config -> plan -> job -> run folder -> "
                           "table -> fit -> forecast; read the contract or the manifest instead):\n"
                           + "\n".join(offenders))
