"""The private APIs of submitit and optuna that gatscale uses live behind one adapter module each
(contract/submitit_private.py, sweeps/optuna_private.py): no other module names them, and each
adapter's `check` passes against the installed release, whose version is inside pyproject's pin.
When a release moves one, these tests fail with the adapter's message naming it and the pin."""
from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.requirements import Requirement

from contract import submitit_private
from sweeps import optuna_private

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = {"submitit": submitit_private, "optuna": optuna_private}
PRIVATE_NAMES = {"_make_sbatch_string": submitit_private, "_convert_mem": submitit_private,
                 "_parse_node_list": submitit_private, "_trial_id": optuna_private}
SCANNED = ("contract", "gat", "sweeps", "analysis", "benchmarks", "scripts")


def pinned(package: str) -> Requirement:
    """The package's requirement in pyproject's dependencies."""
    text = (ROOT / "pyproject.toml").read_text()
    [line] = re.findall(rf'^\s*"({package}[<>=!~][^"]*)"', text, re.MULTILINE)
    return Requirement(line)


@pytest.mark.parametrize("package", sorted(ADAPTERS))
def test_the_adapter_is_written_for_the_pinned_range_and_the_installed_release_is_in_it(package):
    adapter = ADAPTERS[package]
    assert Requirement(adapter.PINNED) == pinned(package), (
        f"pyproject pins {pinned(package)} but {adapter.__name__} says it is written for {adapter.PINNED}")
    installed = importlib.metadata.version(package)
    assert pinned(package).specifier.contains(installed), (
        f"{package} {installed} is outside {adapter.PINNED}: check {adapter.__name__} against it, then move the pin")


@pytest.mark.parametrize("package", sorted(ADAPTERS))
def test_the_private_apis_are_where_the_adapter_expects_them(package):
    ADAPTERS[package].check()  # raises RuntimeError naming the moved API and the pinned range


def test_a_moved_api_is_named_with_the_pin(monkeypatch):
    from submitit.slurm import slurm

    monkeypatch.delattr(slurm, "_convert_mem")
    with pytest.raises(RuntimeError, match=r"submitit\.slurm\.slurm\._convert_mem is gone in submitit .*"
                                           r"written for submitit>=1\.5,<1\.6"):
        submitit_private.convert_mem(2)
    with pytest.raises(RuntimeError, match=r"FrozenTrial\._trial_id is gone in optuna .* written for optuna>="):
        optuna_private.trial_handle(None, SimpleNamespace(number=0))


def test_only_the_adapters_name_the_private_apis():
    offenders = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.parent.name == "__pycache__":
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                name = (node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name)
                        else node.name if isinstance(node, ast.alias) else None)
                owner = PRIVATE_NAMES.get(name)
                if owner is not None and path != Path(owner.__file__):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not offenders, "go through contract/submitit_private.py or sweeps/optuna_private.py:\n" + "\n".join(offenders)
