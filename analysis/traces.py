"""What the early-layer and instability analyses read line by line: one row per run of a tidy
table with the run-level columns (``runs``), and every stats.jsonl line of those runs with its
logged terms and scalar diagnostics (``stats_traces``), read through ``contract.rundir``.

The column names of the grid axes the analyses group by (``RULE``, ``LR``, ``WIDTH``, ``MNG``)
are defined here once.
"""
from __future__ import annotations

import pandas as pd

from analysis.load import AnalysisError
from contract import rundir

RULE, LR, WIDTH, MNG = "train.lr_rule", "train.base_lr", "model.width", "mng.mode"
# Run-level columns carried into per-line tables (all present in analysis.load's table).
RUN_COLUMNS = ("run_id", "run_dir", "status", "diverged_step", WIDTH, "model.depth", RULE, LR, MNG, "seed")
TRACE_KEYS = ("loss_d", "loss_g", "grad_norm_g", "grad_norm_d", "r1", "r2")
DIAGNOSTIC_SCALARS = ("g_output_change", "d_logit_change", "g_act_std", "d_act_std")


def runs(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run of an ``analysis.load`` table, with the run-level columns only."""
    missing = [c for c in RUN_COLUMNS if c not in table]
    if missing:
        raise AnalysisError(f"the table lacks {', '.join(missing)} (build it with analysis.load.load_results)")
    return table.drop_duplicates("run_id")[list(RUN_COLUMNS)].reset_index(drop=True)


def stats_traces(table: pd.DataFrame) -> pd.DataFrame:
    """One row per stats line per run: the run columns, ``step``, the logged terms
    (``TRACE_KEYS``) and the scalar diagnostics (NaN except at eval ticks)."""
    rows = []
    for run in runs(table).to_dict(orient="records"):
        for line in rundir.read_stats(run["run_dir"]):
            diagnostics = line.get("diagnostics") or {}
            rows.append({**run, "step": line.get("step"),
                         **{key: line.get(key) for key in TRACE_KEYS},
                         **{key: diagnostics.get(key) for key in DIAGNOSTIC_SCALARS}})
    columns = [*RUN_COLUMNS, "step", *TRACE_KEYS, *DIAGNOSTIC_SCALARS]
    traces = pd.DataFrame(rows, columns=columns)
    numeric = ["step", *TRACE_KEYS, *DIAGNOSTIC_SCALARS]
    traces[numeric] = traces[numeric].apply(pd.to_numeric, errors="coerce")
    return traces
