"""Run and sweep folders written as the trainer and the launcher write them, for the analysis
tests; torch-free, so a test can also use them in a fresh interpreter that must not load torch."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PUBLISHED = Path(__file__).parent / "data" / "published_gat_v1.csv"


def size_gflops(width: int, depth: int, patch: int) -> float:
    """A stand-in for model.json's G GFLOPs: 12·d²·tokens MACs per block, DiT-like."""
    return 12 * depth * width**2 * (32 // patch) ** 2 / 1e9


def write_run(
    run_dir: Path, *, width: int = 384, depth: int = 12, heads: int = 6, patch: int = 2,
    lr_rule: str = "width_aware", base_lr: float = 2e-4, seed: int = 0, batch: int = 32,
    penalty: str = "approx", state: str = "completed", evals: Sequence[tuple[int, dict[str, float]]] = (),
    last_step: int | None = None, log_every: int = 0, model_json: bool = True, reason: str | None = None,
) -> Path:
    """A run folder as the trainer writes it: config.yaml, model.json, status.json and
    stats.jsonl (eval lines carry ``metrics``/``diagnostics``; ``log_every`` adds log lines)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "seed": seed,
        "model": {"name": None, "width": width, "depth": depth, "heads": heads, "patch": patch,
                  "d_width": None, "d_depth": None},
        "mng": {"mode": "exp", "levels": 4},
        "loss": {"penalty": penalty, "gamma": 0.1},
        "data": {"kind": "latents"},  # the published ImageNet-256 runs these stand for
        "train": {"batch": batch, "lr_rule": lr_rule, "base_lr": base_lr, "base_width": 768, "log_every": log_every},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if model_json:
        gflops = size_gflops(width, depth, patch)
        (run_dir / "model.json").write_text(json.dumps({
            "generator_params": 12 * depth * width**2, "discriminator_params": 10 * depth * width**2,
            "generator_gflops": gflops, "discriminator_gflops": 0.8 * gflops,
            "g_width": width, "d_width": width, "g_depth": depth, "d_depth": depth, "patch": patch,
        }))
    steps = [s for s, _ in evals]
    final_step = last_step if last_step is not None else (max(steps) if steps else 0)
    lines = []
    eval_at = dict(evals)
    grid = sorted(set(range(log_every, final_step + 1, log_every) if log_every else []) | set(steps))
    for step in grid:
        line: dict[str, Any] = {"step": step, "images_seen": step * batch, "wall_s": 0.05 * step,
                                "loss_d": 0.6, "loss_g": 0.8, "r1": 0.02, "repa": None}
        if step in eval_at:
            line["metrics"] = eval_at[step]
            line["diagnostics"] = {"g_output_change": 0.01, "g_block_ablation": [0.01, 0.05, 0.2, 0.4]}
        lines.append(json.dumps(line))
    (run_dir / "stats.jsonl").write_text("".join(line + "\n" for line in lines))
    (run_dir / "status.json").write_text(json.dumps({
        "state": state, "step": final_step, "reason": reason, "updated": "2026-01-01T00:00:00Z",
    }))
    return run_dir


def write_sweep(sweep_dir: Path, runs: Sequence[dict[str, Any]], pending: Sequence[str] = ()) -> Path:
    """A sweep folder: manifest.json plus runs/<name>/. Each entry: ``name``, ``coords`` and
    the ``write_run`` keywords in ``run``; ``pending`` names planned runs with no folder yet."""
    entries = []
    for spec in runs:
        write_run(sweep_dir / "runs" / spec["name"], **spec.get("run", {}))
        entries.append({"run_id": f"id-{spec['name']}", "name": spec["name"], "dir": f"runs/{spec['name']}",
                        "coords": spec.get("coords", {}), "overrides": {}})
    for name in pending:
        entries.append({"run_id": f"id-{name}", "name": name, "dir": f"runs/{name}", "coords": {}, "overrides": {}})
    (sweep_dir / "manifest.json").write_text(json.dumps({
        "grid_file": "grid.yaml", "grid": "", "git_commit": "abc", "created": "2026-01-01T00:00:00Z",
        "runs": entries, "jobs": [],
    }))
    return sweep_dir


def curve(steps: Sequence[int], start: float, end: float, metric: str = "fid50k") -> list[tuple[int, dict[str, float]]]:
    """A geometric learning curve from ``start`` to ``end`` over ``steps``."""
    values = np.geomspace(start, end, len(steps))
    return [(int(s), {metric: float(v)}) for s, v in zip(steps, values)]
