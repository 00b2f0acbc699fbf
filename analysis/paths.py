"""Where the notebooks find a study and where they write, from this checkout or the environment,
and where a command-line report writes without ``--out`` (``default_out``).

Paths resolve from the repository (the folder above this package), never from the working
directory: Jupyter runs a notebook in ``notebooks/``, a batch job wherever it was started.

* ``GATSCALE_RESULTS``: the study folder a notebook reads, instead of its committed default;
* ``GATSCALE_FIGURES``: where a notebook writes its figures and tables (in ``<it>/<study name>``),
  instead of a new temporary folder (removed when the kernel exits);
* ``GATSCALE_UPDATE_RESULTS=1``: write into the study's own ``analysis/`` folder, replacing the
  committed figures and tables (what ``scripts/reproduce_results.sh`` does); never the default.

A relative path (a notebook parameter or ``GATSCALE_RESULTS``) is taken from the repository root.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from analysis.load import AnalysisError

REPO = Path(__file__).resolve().parent.parent


def from_repo(path: str | Path) -> Path:
    """``path`` itself when absolute, else the same path under the repository root."""
    return REPO / Path(path).expanduser()  # an absolute right-hand side replaces REPO


def study_dir(path: str | Path) -> Path:
    """The study a notebook reads: ``$GATSCALE_RESULTS`` when set, else ``path`` (a study
    folder, e.g. the committed ``results/mng_cpu``)."""
    study = from_repo(os.environ.get("GATSCALE_RESULTS") or path)
    if not study.is_dir():
        raise AnalysisError(f"{study}: no such study folder (set GATSCALE_RESULTS to a study folder: a sweep "
                            "folder, or a copy of results/<study> from a gatscale checkout)")
    return study


def output_dir(study: Path) -> Path:
    """Where a notebook writes (created): ``<study>/analysis`` when ``GATSCALE_UPDATE_RESULTS=1``,
    else ``$GATSCALE_FIGURES/<study name>``, else a new temporary folder, removed when the process
    (the notebook's kernel) exits so executions leave nothing behind. Committed files are
    therefore only replaced on request."""
    if os.environ.get("GATSCALE_UPDATE_RESULTS") == "1":
        out = study / "analysis"
    elif os.environ.get("GATSCALE_FIGURES"):
        out = from_repo(os.environ["GATSCALE_FIGURES"]) / study.name
    else:
        scratch = Path(tempfile.mkdtemp(prefix=f"gatscale-{study.name}-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        return scratch
    out.mkdir(parents=True, exist_ok=True)
    return out


def default_out(source: Path, untracked: bool) -> Path:
    """Where a command-line report goes without --out: ``<study>/analysis`` when read from run
    folders, else ``studies/<name>/analysis`` under the current folder (untracked, as the sweeps'
    default), so a table in the package, the test data or a committed study is never written next to."""
    return Path("studies") / (source.stem if source.is_file() else source.resolve().name) / "analysis" if untracked \
        else source / "analysis"
