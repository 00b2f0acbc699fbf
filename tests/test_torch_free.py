"""The contract, the sweep engine and the analysis never load torch: planning a sweep, sizing its
runs and reading a study must work on a login node or laptop without it (issue 24).

Each check runs in a fresh interpreter (this one has torch loaded by other tests) with a
tripwire on torch's import that records which project modules were on the stack, so a failure
names the module that pulled torch in and the chain that led there.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("contract", "sweeps", "analysis")
MARK = "TORCH-PULLED "  # the child's report lines (its stdout also carries what the code under test prints)

# Run first in the child (after `MARK = ...`): records the project frames on the stack at torch's
# first import, and gives the body `report(step)`.
TRIPWIRE = textwrap.dedent('''
    import importlib.abc, json, os, sys, traceback
    ROOT = os.getcwd()
    _pulls = []

    class _Tripwire(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" and not _pulls:
                frames = [f"{os.path.relpath(f.filename, ROOT)}:{f.lineno}" for f in traceback.extract_stack()
                          if f.filename.startswith(ROOT)]
                _pulls.append(frames)
            return None  # the ordinary finders import it: the child sees what a user would

    sys.meta_path.insert(0, _Tripwire())

    def report(step):
        """Print the step and the chain once torch is loaded (once: later steps would only echo it)."""
        if "torch" in sys.modules and not getattr(report, "done", False):
            report.done = True
            print(MARK + json.dumps({"step": step, "chain": _pulls[0] if _pulls else []}), flush=True)
''')


def project_modules() -> list[str]:
    """Every module of the torch-free packages, found by walking their folders (a `__main__` is
    left out: importing it would run its command)."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.stem == "__main__":
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def run_child(body: str) -> list[dict]:
    """Run TRIPWIRE + body in a fresh interpreter at the repository root; the torch reports it printed."""
    code = f"MARK = {MARK!r}\n" + TRIPWIRE + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads(line.removeprefix(MARK)) for line in result.stdout.splitlines() if line.startswith(MARK)]


def explain(reports: list[dict]) -> str:
    """The failure message: each step that loaded torch, with the project frames of the import."""
    return "\n".join(f"{r['step']} pulled torch in; project frames at the import:\n  " + "\n  ".join(r["chain"])
                     for r in reports)


def test_the_walk_finds_every_package():
    names = project_modules()
    assert {"contract.model_shape", "sweeps.costs", "sweeps.launch", "analysis.load"} <= set(names)


def test_the_tripwire_names_the_importer():
    reports = run_child('''
        from contract import cli
        report("import contract.cli")
        cli.device("cpu")  # imports torch inside the function
        report("contract.cli.device")
    ''')
    assert [r["step"] for r in reports] == ["contract.cli.device"]
    assert any(frame.startswith("contract/cli.py:") for frame in reports[0]["chain"]), reports


def test_importing_every_module_leaves_torch_unloaded():
    reports = run_child(f'''
        import importlib
        for name in {project_modules()!r}:
            importlib.import_module(name)
            report("import " + name)
    ''')
    assert not reports, explain(reports)


def test_a_dry_run_and_a_study_table_leave_torch_unloaded(tmp_path: Path):
    reports = run_child(f'''
        from pathlib import Path

        from sweeps import launch
        assert launch.main(["scaling_cpu.yaml", "--dry-run", "--out", {str(tmp_path / "plan")!r}]) == 0
        report("sweeps.launch scaling_cpu.yaml --dry-run")
        assert launch.main(["isoflop_cpu.yaml", "--dry-run", "--json", "--out", {str(tmp_path / "iso")!r}]) == 0
        report("sweeps.launch isoflop_cpu.yaml --dry-run --json (budgets solved from the FLOP count)")

        from analysis import load
        table = load.load_study_table("results/scaling_cpu")
        assert len(table) and table["g_params"].notna().all()
        report("analysis.load.load_study_table(results/scaling_cpu)")

        from tests.run_folders import curve, write_run
        run = write_run(Path({str(tmp_path / "run")!r}), evals=curve([10, 20], 9, 5), model_json=False)
        assert load.load_results([run])["g_params"].notna().all()
        report("analysis.load.load_results of a run folder without model.json (sized from its config)")
    ''')
    assert not reports, explain(reports)
    assert not (tmp_path / "plan").exists() and not (tmp_path / "iso").exists()  # a dry run writes nothing
