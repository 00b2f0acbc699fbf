"""gatscale works as a wheel installed into a fresh venv, run from a directory that is not the
checkout: bundled configs resolve as package data, and provenance names gatscale's version and
never the commit of whatever git repository the venv happens to sit in."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from contract import __version__
from sweeps.plan import make_plan
from sweeps.spec import load_grid

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The python of a fresh venv holding only the gatscale wheel; its dependencies (torch...)
    come from this test's environment through a plain path line, which, unlike a site dir,
    does not run that environment's editable-install hook."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("contract", "gat", "sweeps", "analysis"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
                 str(source)], cwd=tmp)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp / "dist").glob("gatscale-*.whl"))
    # The venv sits inside a git repository of the user's own, with a commit.
    user_repo = tmp / "user_repo"
    user_repo.mkdir()
    for args in (["init", "-q"], ["-c", "user.email=u@example.org", "-c", "user.name=u", "commit", "-q",
                                   "--allow-empty", "-m", "user's own work"]):
        assert run(["git", *args], cwd=user_repo).returncode == 0
    venv = user_repo / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp).returncode == 0
    python = venv / "bin" / "python"
    installed = run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                     "--disable-pip-version-check", str(wheel)], cwd=tmp)
    assert installed.returncode == 0, installed.stderr
    purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       cwd=tmp).stdout.strip())
    (purelib / "outer_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_wheel_runs_from_elsewhere(installed, tmp_path):
    where = run([str(installed), "-c", "import gat, sweeps; print(gat.__file__); print(sweeps.__file__)"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(str(installed.parent.parent) in line for line in where.stdout.split()), where.stdout
    dry = run([str(installed), "-m", "sweeps.launch", "scaling_grid.yaml", "--dry-run"], cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    planned = make_plan(load_grid("scaling_grid.yaml"), tmp_path / "unused").runs  # the checkout's plan
    assert all(planned_run.name in dry.stdout for planned_run in planned), dry.stdout
    assert not any(tmp_path.iterdir())  # planned, nothing written
    models = run([str(installed), "-m", "gat.models", "GAT-B/2", "--json"], cwd=tmp_path)
    assert models.returncode == 0, models.stderr
    assert json.loads(models.stdout)["g_width"] == 768
    version = run([str(installed), "-m", "gat.train", "--version"], cwd=tmp_path)
    assert version.stdout.strip() == f"gatscale {__version__}"
    # A trainer config by bundled name, and the checkout-relative spelling grids use.
    for name in ("fmnist_smoke.yaml", "gat/configs/fmnist.yaml"):
        loaded = run([str(installed), "-c", f"from contract.config import load_config; print(load_config({name!r}).data.kind)"],
                     cwd=tmp_path)
        assert loaded.stdout.strip() == "fashion_mnist", loaded.stderr


def test_provenance_of_an_install_names_the_version_not_the_users_commit(installed, tmp_path):
    probe = ("import json; from contract import rundir; from pathlib import Path; "
             "Path('run').mkdir(); p = rundir.record_attempt(Path('run'), 'cpu', 0, 1); "
             "print(json.dumps({k: p[k] for k in ('gatscale_version', 'git_commit', 'git_dirty')}))")
    # cwd inside the user's repository too: neither the venv's nor the cwd's repo is gatscale's
    cwd = installed.parent.parent.parent
    done = run([str(installed), "-c", probe], cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"gatscale_version": __version__, "git_commit": None,
                                                        "git_dirty": None}
