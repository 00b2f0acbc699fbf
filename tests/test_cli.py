"""Every command line follows docs/cli.md: `--version`, `--help` text on every option, and a bad
argument or a bad input as one `error:` line on stderr with exit code 2 (no traceback)."""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contract import __version__

ROOT = Path(__file__).resolve().parent.parent

# module -> argv with a bad *input* (the flags parse; what they name is wrong)
BAD_INPUT = {
    "gat.train": lambda tmp: ["missing.yaml", "--out", str(tmp / "run")],
    "gat.bench": lambda tmp: ["--model", "GAT-Q/9", "--batch", "1", "--steps", "1"],
    "gat.sample": lambda tmp: [str(tmp / "no-run"), "--num", "2", "--out", str(tmp / "s.npz")],
    "gat.fid": lambda tmp: [str(tmp / "a.npz"), str(tmp / "b.npz")],
    "gat.prepare": lambda tmp: ["--source", str(tmp / "no-images"), "--out", str(tmp / "out")],
    "gat.coord_check": lambda tmp: ["--widths", "20", "--head-dim", "8", "--out", str(tmp)],
    "gat.models": lambda tmp: ["GAT-Q/9"],
    "sweeps.launch": lambda tmp: [str(tmp / "no-grid.yaml")],
    "sweeps.status": lambda tmp: [str(tmp / "no-sweep")],
    "sweeps.cancel": lambda tmp: [str(tmp)],
    "sweeps.tune": lambda tmp: [str(tmp / "no-search.yaml")],
    # the real parent, so the guard goes on to exec: a program that does not exist
    "sweeps.orphan_guard": lambda tmp: [str(os.getppid()), str(tmp / "no-such-program")],
    "analysis.plot_scaling": lambda tmp: [str(tmp / "no-results")],
    "analysis.plot_lr_transfer": lambda tmp: [str(tmp / "no-results")],
    "analysis.plot_stability": lambda tmp: [str(tmp / "no-results")],
    "analysis.ablations": lambda tmp: [str(tmp / "no-study")],
    "analysis.forecast": lambda tmp: [str(tmp / "no-study"), "--budget", "1e14"],
}
CLIS = sorted(BAD_INPUT)


def entry(module: str):
    name = "gat.models.__main__" if module == "gat.models" else module
    return importlib.import_module(name).main


def call(module: str, argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = entry(module)(argv)
    except SystemExit as exit_:  # argparse's own exits (--version, usage errors)
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("module", CLIS)
def test_unknown_flag_is_one_error_line(module, capsys):
    code, _, err = call(module, ["--no-such-flag"], capsys)
    assert_one_error_line(code, err)


@pytest.mark.parametrize("module", CLIS)
def test_bad_input_is_one_error_line(module, tmp_path, capsys):
    code, _, err = call(module, BAD_INPUT[module](tmp_path), capsys)
    assert_one_error_line(code, err)


@pytest.mark.parametrize("module", CLIS)
def test_version_and_help_on_every_option(module, capsys, monkeypatch):
    code, out, _ = call(module, ["--version"], capsys)
    assert code == 0 and out.strip() == f"gatscale {__version__}"
    code, out, _ = call(module, ["--help"], capsys)
    assert code == 0 and out.startswith(f"usage: python -m {module}")

    captured = {}

    def spy(self, args=None, namespace=None):  # keep the parser, then stop as --help would
        captured["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    call(module, [], capsys)
    undocumented = [a.option_strings or a.dest for a in captured["parser"]._actions if not a.help]
    assert undocumented == []


def test_errors_come_from_rank_zero_only(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    code, out, err = call("gat.models", ["GAT-Q/9"], capsys)
    assert code == 2 and out == "" and err == ""


def test_a_real_process_prints_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sweeps.status", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1


HEAVY = ("torch", "pandas", "scipy", "matplotlib", "seaborn", "optuna", "diffusers")


def test_every_command_line_is_listed():
    from benchmarks.bench_cli_help import commands  # the benchmark's discovery: modules with a __main__ guard

    assert commands() == CLIS


@pytest.mark.parametrize("module", CLIS)
def test_help_parses_before_the_heavy_imports(module):
    """`--help` answers before torch & co. load (benchmarks/bench_cli_help.py times it; not timed here)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: python -m {module}"), done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "argparse" in imported, "no -X importtime output: the check is broken"
    assert sorted(imported & set(HEAVY)) == []
