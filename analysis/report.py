"""A report of a study as the early-layer and instability analyses make it: tidy tables and
figures by name, and for each one it could not make, why.

A study's run folders are not committed, so ``open_report`` reads them when they are on disk and
otherwise leaves the report to its committed tables (``Report.read_committed``), from which the
figures are redrawn. ``Report.save`` writes the files the command line writes; ``Report.show``
is what the notebooks display.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis import plots
from analysis.load import ID_DTYPES, AnalysisError, load_study_runs

@dataclass
class Report:
    """What a report made of a study, by name: tidy tables (written as ``<name>.csv``), figures
    (``<name>.png``), and for each table or figure it could not make, why (``missing``)."""

    study: Path
    source: str  # "run folders" or "committed tables"
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, plt.Figure] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def add_table(self, name: str, table: pd.DataFrame, if_empty: str = "no run has the data") -> None:
        """Keep ``table`` as ``name`` (``if_empty`` says why there is none when it has no row).
        ``run_dir`` is dropped: a path on one machine, and these tables get committed."""
        if table.empty:
            self.missing[name] = if_empty
        else:
            self.tables[name] = table.drop(columns="run_dir", errors="ignore")

    def read_committed(self, names: Sequence[str]) -> None:
        """The tables ``<study>/analysis/<name>.csv`` that exist; the others are missing."""
        for name in names:
            path = self.study / "analysis" / f"{name}.csv"
            if path.is_file():
                self.tables[name] = pd.read_csv(path, dtype=ID_DTYPES)
            else:
                self.missing[name] = f"needs the run folders of {self.study} (absent) or a committed {path.name}"

    def draw(self, name: str, needs: str, plot: Callable[[pd.DataFrame], plt.Figure]) -> None:
        """Figure ``name``, drawn by ``plot`` from the table ``needs``, or why not."""
        if needs not in self.tables:
            self.missing[name] = self.missing.get(needs, f"no {needs} table")
            return
        try:
            self.figures[name] = plot(self.tables[needs])
        except AnalysisError as err:
            self.missing[name] = str(err)

    def save(self, out: Path) -> list[Path]:
        """Write every table and figure into ``out``; the figures are closed (a notebook can
        still display them)."""
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, table in self.tables.items():
            table.to_csv(out / f"{name}.csv", index=False)
            written.append(out / f"{name}.csv")
        return written + [plots.save_figure(fig, out / f"{name}.png") for name, fig in self.figures.items()]

    def show(self, *names: str) -> None:
        """In a notebook: each named table and figure; for one not made, why, and the study's
        committed PNG of it when there is one (labelled as such)."""
        from IPython.display import Image, display

        for name in names:
            if name in self.tables:
                display(self.tables[name].round(4))
            if name in self.figures:
                display(self.figures[name])
            elif name in self.missing:
                print(f"{name}: not made here: {self.missing[name]}")
                committed = self.study / "analysis" / f"{name}.png"
                if committed.is_file():
                    print(f"the committed figure ({committed}):")
                    display(Image(filename=str(committed)))


def open_report(study: str | Path) -> tuple[Report, pd.DataFrame | None]:
    """An empty report of ``study`` and the table of its run folders; the table is None, and
    the report's source "committed tables", when the run folders are not on disk."""
    study = Path(study)
    table = load_study_runs(study)
    return Report(study, "committed tables" if table is None else "run folders"), table
