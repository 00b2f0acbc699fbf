"""benchmarks/gpu_check.sh (issue 25, item 4): its CPU smoke runs every section at toy sizes and
writes every key, so the GPU check cannot rot before a GPU is lent; its parser reads gat.bench's
CUDA line, which the CPU never prints."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_cpu_smoke_writes_every_section(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["failed"] == []
    for key in gpu_check.SECTIONS:
        assert key in report and "error" not in report[key], (key, report.get(key))

    device = report["device"]
    assert device["type"] == "cpu" and device["name"] and positive(device["memory_gib"]) and device["torch"]
    for case in ("eager", "compiled"):
        bench = report["bench"][case]
        assert positive(bench["ms_per_step"]) and positive(bench["tflops_per_s"]), bench
        assert bench["mfu"] is None and bench["precision"] == "fp32"  # gat.bench knows no CPU peak
    assert report["bench"]["compiled"]["compiled"] and report["bench"]["compiled"]["compile_backend"] == "eager"
    assert positive(report["peak_memory"]["peak_memory_mib"])

    train = report["train"]
    assert train["steps"] == gpu_check.SMOKE.train_steps and train["metric"] == "fid8_train"
    assert positive(train["fid"]) and positive(train["seconds"])

    group = report["process_group"]
    assert group["backend"] == "gloo" and group["correct"] and group["init_s"] >= 0

    packing = report["packing"]
    assert set(packing["runs_per_hour"]) == {"1", "2"}
    assert all(positive(rate) for rate in packing["runs_per_hour"].values())
    assert all(len(packing["sizes"][n]["train_s"]) == int(n) for n in ("1", "2"))
    assert len(list((tmp_path / "work" / "runs" / "pack2").glob("run*/status.json"))) == 2


def test_bench_line_with_mfu_parses():
    line = ("GAT-B/2 batch 64 on NVIDIA H100 80GB HBM3 x1: 152.3 ms/step, 420.2 images/s, peak memory 30123 MiB, "
            "25.1 TFLOP/step (estimate), 165 TFLOP/s, MFU 16.7% of 989 TFLOP/s bf16 peak")
    parsed = gpu_check.parse_bench("some warning\n" + line + "\n")
    assert parsed["on"] == "NVIDIA H100 80GB HBM3 x1" and parsed["ms_per_step"] == 152.3
    assert parsed["mfu"] == pytest.approx(0.167) and parsed["peak_tflops"] == 989.0
    assert parsed["peak_memory_mib"] == 30123.0 and parsed["tflops_per_s"] == 165.0


def test_bench_line_in_exponent_notation_parses_without_mfu():
    parsed = gpu_check.parse_bench("w16-d2-h2-p2 batch 4 on cpu (1 threads): 47.2 ms/step, 84.7 images/s, "
                                   "peak memory 327 MiB, 1.96e-05 TFLOP/step (estimate), 0.000415 TFLOP/s")
    assert parsed["tflop_per_step"] == 1.96e-05 and parsed["mfu"] is None


def test_a_failed_section_records_its_error_and_the_exit_status_is_one(tmp_path):
    """Sections that cannot start in the budget are skipped with an error, the rest still run."""
    assert gpu_check.check(gpu_check.SMOKE, tmp_path, budget_s=1, log=lambda line: None) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failed"] == list(gpu_check.SECTIONS)
    assert all("budget" in report[key]["error"] for key in gpu_check.SECTIONS)
