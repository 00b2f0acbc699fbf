"""The run-folder contract has one home: no module outside `contract/` spells a run-folder file's
name, so none can open it behind the contract's readers and writers (their state checks, torn-line
handling and atomic writes)."""
from __future__ import annotations

import ast
from pathlib import Path

from contract import rundir

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_FILES = {rundir.STATUS, rundir.STATS, rundir.CONFIG, rundir.PROVENANCE, rundir.MODEL, rundir.EVENTS}
SCANNED = ("gat", "sweeps", "analysis", "benchmarks", "scripts")


def file_name_literals(source: str) -> list[tuple[int, str]]:
    """(line, name) of each string literal that is exactly a contract file's name; docstrings and
    messages that mention a file in a sentence are not literals of its name."""
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and node.value in CONTRACT_FILES]


def test_the_scan_finds_a_file_name():
    assert file_name_literals('p = run_dir / "status.json"\n') == [(1, "status.json")]
    assert file_name_literals('"""Reads status.json."""\nraise E(f"no x in {d}/stats.jsonl")\n') == []


def test_no_module_outside_the_contract_names_a_run_folder_file():
    offenders = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            for line, name in file_name_literals(path.read_text()):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {name!r}")
    assert (ROOT / "contract" / "rundir.py").is_file()
    assert not offenders, "use contract.rundir's names and readers instead:\n" + "\n".join(offenders)
