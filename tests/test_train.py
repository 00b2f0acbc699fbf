"""The trainer end to end: run folder contract, exact resume, kill -9, corrupt checkpoints,
divergence, failures, config errors, dry runs, sampling and the benchmark.

Most tests run in-process on a small synthetic latent dataset (8x8 latents, 10 classes) so
they take seconds; the smoke and kill tests go through the real CLI and Fashion-MNIST.
"""
from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import gat.sample
import gat.step
import gat.train
from contract import rundir
from gat import checkpoint
from contract.config import load_config, to_dict
from conftest import SMOKE, Interrupt, tiny_config

ROOT = Path(__file__).resolve().parent.parent
TIMING_KEYS = ("wall_s", "sec_per_step", "images_per_s", "peak_mem_mb")
CHILD_ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}


def run_until_checkpoint(monkeypatch, config, run_dir, stop_step):
    """Run and stop right after the checkpoint at `stop_step` is written."""
    real_save = checkpoint.save

    def save_then_stop(directory, state, **kwargs):
        real_save(directory, state, **kwargs)
        if state["step"] == stop_step:
            raise Interrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(Interrupt):
        gat.train.run(config, run_dir)
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert rundir.read_status(run_dir)["state"] == "running"


def stats_without_timing(run_dir):
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in rundir.read_stats(run_dir)]


def assert_same_training_state(dir_a, dir_b):
    a = torch.load(dir_a / "checkpoints" / "latest.pt", weights_only=False)
    b = torch.load(dir_b / "checkpoints" / "latest.pt", weights_only=False)
    assert a["step"] == b["step"]
    for net in ("G", "D", "G_ema"):
        for name, tensor in a[net].items():
            assert torch.equal(tensor, b[net][name]), f"{net}.{name} differs"
    for opt in ("opt_g", "opt_d"):
        for index, slot in a[opt]["state"].items():
            for key, value in slot.items():
                assert torch.equal(value, b[opt]["state"][index][key]), f"{opt} state {index}.{key} differs"
    assert stats_without_timing(dir_a) == stats_without_timing(dir_b)


# --------------------------------------------------------------------------------------------
# The run folder


def test_run_folder_follows_the_contract(synthetic, tmp_path):
    run_dir = tmp_path / "run"
    assert gat.train.run(tiny_config(), run_dir) == "completed"

    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == 6 and status["reason"] is None
    assert status["updated"].endswith("+00:00")
    assert load_config(run_dir / "config.yaml") == tiny_config()

    model = json.loads((run_dir / "model.json").read_text())
    for key in ("generator_params", "discriminator_params", "discriminator_projector_params", "generator_gflops",
                "discriminator_gflops", "mng_noise_levels", "g_width", "d_width", "g_depth", "d_depth", "patch", "tokens"):
        assert key in model

    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert {"git_commit", "git_dirty", "packages", "host", "device", "attempts"} <= set(provenance)
    assert provenance["packages"]["torch"] == torch.__version__.split("+")[0] or provenance["packages"]["torch"]
    assert provenance["attempts"][0]["resumed_from_step"] == 0
    assert {"started", "host", "slurm_job_id", "slurm_array_task_id"} <= set(provenance["attempts"][0])

    records = rundir.read_stats(run_dir)
    assert [r["step"] for r in records] == [2, 3, 4, 6]  # log every 2 plus the eval tick at 3
    first = records[0]
    for key in ("step", "images_seen", "wall_s", "loss_d", "loss_g", "r1", "r2", "repa", "grad_norm_g",
                "grad_norm_d", "lr_g", "lr_d", "sec_per_step", "images_per_s", "peak_mem_mb"):
        assert key in first
    assert first["images_seen"] == 16 and first["repa"] is None and "metrics" not in first
    assert first["lr_g"] == pytest.approx(2e-4 * 768 / 32)
    eval_line = records[1]
    diag = eval_line["diagnostics"]
    assert set(diag) == {"g_output_change", "d_logit_change", "g_block_update_ratio", "g_block_ablation",
                         "g_act_std", "d_act_std"}
    assert len(diag["g_block_update_ratio"]) == len(diag["g_block_ablation"]) == 4
    assert diag["g_output_change"] > 0 and diag["d_logit_change"] > 0

    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "step-0000003-psi0.3.png", "step-0000003.png", "step-0000006-psi0.3.png", "step-0000006.png"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "latest.pt", "previous.pt", "step-0000004.pt"]


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(synthetic, monkeypatch, tmp_path):
    config = tiny_config()
    gat.train.run(config, tmp_path / "straight")
    run_until_checkpoint(monkeypatch, config, tmp_path / "resumed", stop_step=4)
    assert gat.train.run(config, tmp_path / "resumed") == "completed"
    assert_same_training_state(tmp_path / "straight", tmp_path / "resumed")
    attempts = json.loads((tmp_path / "resumed" / "provenance.json").read_text())["attempts"]
    assert [a["resumed_from_step"] for a in attempts] == [0, 4]


def test_corrupt_latest_checkpoint_falls_back_to_previous(synthetic, monkeypatch, tmp_path):
    config = tiny_config()
    gat.train.run(config, tmp_path / "straight")
    run_dir = tmp_path / "resumed"
    run_until_checkpoint(monkeypatch, config, run_dir, stop_step=4)
    latest = run_dir / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    with pytest.warns(UserWarning, match="unreadable"):
        assert gat.train.run(config, run_dir) == "completed"
    # Resumed from step 2: the stats lines written after it were redone, not duplicated.
    assert_same_training_state(tmp_path / "straight", run_dir)


def test_divergence_is_recorded_and_final(synthetic, tmp_path, capsys):
    run_dir = tmp_path / "run"
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(SMOKE.read_text())
    args = [str(config_path), "--out", str(run_dir), "--set", "train.base_lr=1e6", "--set", "train.steps=30",
            "--set", "eval.extractor=none", "--set", "logging.wandb=off", "--set", "train.batch=8",
            "--set", "logging.progress=lines"]
    assert gat.train.main(args) == 0
    status = rundir.read_status(run_dir)
    assert status["state"] == "diverged" and "non-finite" in status["reason"]
    assert rundir.read_stats(run_dir)[-1]["step"] == status["step"]
    # A diverged run is a result: running it again does not retrain.
    assert gat.train.main(args) == 0
    assert "already diverged" in capsys.readouterr().out


def test_injected_nan_marks_the_step_it_happened(synthetic, monkeypatch, tmp_path):
    real_step = gat.step.train_step
    calls = []

    def poisoned(*args, **kwargs):
        terms = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            terms["grad_norm_g"] = torch.tensor(float("nan"))
        return terms

    monkeypatch.setattr(gat.step, "train_step", poisoned)
    assert gat.train.run(tiny_config(), tmp_path / "run") == "diverged"
    status = rundir.read_status(tmp_path / "run")
    assert status["step"] == 3 and "grad_norm_g" in status["reason"]
    assert rundir.read_stats(tmp_path / "run")[-1]["grad_norm_g"] is None  # NaN is written as null


def test_exception_marks_failed_with_reason_and_nonzero_exit(synthetic, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(gat.step, "train_step", broken)
    run_dir = tmp_path / "run"
    code = gat.train.main([str(SMOKE), "--out", str(run_dir), "--set", "logging.wandb=off",
                           "--set", "eval.extractor=none"])
    assert code == 1
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed" and status["reason"] == "RuntimeError: boom"


def test_completed_run_is_not_retrained(synthetic, tmp_path, capsys):
    run_dir = tmp_path / "run"
    gat.train.run(tiny_config(), run_dir)
    before = (run_dir / "stats.jsonl").read_text()
    assert gat.train.run(tiny_config(), run_dir) == "completed"
    assert (run_dir / "stats.jsonl").read_text() == before
    assert "already completed" in capsys.readouterr().out


def test_a_folder_with_another_config_is_refused(synthetic, tmp_path, capsys):
    run_dir = tmp_path / "run"
    gat.train.run(tiny_config(), run_dir)
    code = gat.train.main([str(SMOKE), "--out", str(run_dir), "--set", "train.base_lr=1e-3"])
    assert code == 2
    assert "train.base_lr" in capsys.readouterr().err
    assert rundir.read_status(run_dir)["state"] == "completed"


# --------------------------------------------------------------------------------------------
# CLI


@pytest.mark.parametrize("override, key", [("train.bogus=1", "train.bogus"), ("train.batch=abc", "train.batch"),
                                           ("model.width=-3", "model.width"), ("mng.mode=cubic", "mng.mode")])
def test_config_errors_name_the_key(tmp_path, capsys, override, key):
    code = gat.train.main([str(SMOKE), "--out", str(tmp_path / "run"), "--set", override])
    assert code == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_the_summary_and_writes_nothing(synthetic, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert gat.train.main([str(SMOKE), "--out", str(run_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "generator_params" in out and "train:" in out
    assert not run_dir.exists()


def test_stream_seeds_are_distinct_and_stable():
    seeds = {gat.step.stream_seed(0, stream, step, rank) for stream in ("z", "data") for step in range(3) for rank in range(2)}
    assert len(seeds) == 12
    assert gat.step.stream_seed(0, "z", 5) == gat.step.stream_seed(0, "z", 5)


def test_data_order_is_a_function_of_the_step():
    order = gat.step.DataOrder(size=10, batch=3, seed=0)
    epoch0 = torch.cat([order.indices(s) for s in range(3)])
    assert len(set(epoch0.tolist())) == 9  # a permutation, ragged tail dropped
    again = gat.step.DataOrder(size=10, batch=3, seed=0)
    assert torch.equal(again.indices(4), order.indices(4))
    assert not torch.equal(order.indices(3), order.indices(0))  # a new epoch reshuffles


# --------------------------------------------------------------------------------------------
# Sampling and benchmark


def test_sample_writes_adm_style_archives(synthetic, tmp_path):
    sample = gat.sample
    run_dir = tmp_path / "run"
    gat.train.run(tiny_config(), run_dir)
    out = tmp_path / "samples.npz"
    assert sample.main([str(run_dir), "--num", "10", "--out", str(out), "--psi", "0.3", "--seed", "1"]) == 0
    with np.load(out) as archive:
        images, labels = archive["arr_0"], archive["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (10, 32, 32, 3)
    assert labels.shape == (10,) and labels.max() < 10
    default, untruncated = tmp_path / "default.npz", tmp_path / "psi0.npz"
    sample.main([str(run_dir), "--num", "10", "--out", str(default), "--seed", "1"])  # ψ = 0.3, as the official sampler
    sample.main([str(run_dir), "--num", "10", "--out", str(untruncated), "--psi", "0", "--seed", "1"])
    with np.load(default) as archive, np.load(untruncated) as plain:
        assert np.array_equal(archive["arr_0"], images) and not np.array_equal(plain["arr_0"], images)


def test_bench_reports_step_time(capsys):
    from gat import bench

    assert bench.main(["--model", "w32-d4-h2-p2", "--batch", "4", "--steps", "2", "--device", "cpu", "--latent-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "ms/step" in out and "images/s" in out


# --------------------------------------------------------------------------------------------
# Through the real CLI on Fashion-MNIST


def _cli(run_dir: Path, *overrides: str) -> list[str]:
    args = [sys.executable, "-m", "gat.train", str(SMOKE), "--out", str(run_dir)]
    for item in overrides:
        args += ["--set", item]
    return args


@pytest.mark.slow
def test_smoke_config_trains_end_to_end(tmp_path):
    run_dir = tmp_path / "smoke"
    started = time.time()
    result = subprocess.run(_cli(run_dir), env=CHILD_ENV, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    status = rundir.read_status(run_dir)
    assert status["state"] == "completed"
    records = rundir.read_stats(run_dir)
    metrics = [r["metrics"] for r in records if "metrics" in r]
    assert metrics and all(np.isfinite(m["fd_fmnist"]) for m in metrics)
    assert list((run_dir / "samples").glob("*.png"))
    print(f"smoke run wall time {time.time() - started:.1f} s")


@pytest.mark.slow
def test_kill_9_then_rerun_matches_an_uninterrupted_run(tmp_path):
    overrides = ("train.steps=16", "train.ckpt_every=4", "train.log_every=2", "eval.every=8",
                 "eval.extractor=none", "train.batch=8", "logging.wandb=off")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_cli(straight, *overrides), env=CHILD_ENV, cwd=ROOT, check=True, capture_output=True, timeout=900)

    process = subprocess.Popen(_cli(killed, *overrides), env=CHILD_ENV, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if any(r["step"] >= 6 for r in rundir.read_stats(killed)):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert rundir.read_status(killed)["state"] == "running"

    subprocess.run(_cli(killed, *overrides), env=CHILD_ENV, cwd=ROOT, check=True, capture_output=True, timeout=900)
    assert rundir.read_status(killed)["state"] == "completed"
    assert_same_training_state(straight, killed)


def test_planned_and_tabled_training_flops_agree(synthetic, tmp_path):
    """The dry run's FLOPs (sweeps.costs) and results.csv's train_flops (analysis.load) count
    the same run the same way: both go through contract.flops."""
    from analysis.load import load_results
    from sweeps import costs
    from contract.config import flatten

    config = tiny_config()
    run_dir = tmp_path / "run"
    gat.train.run(config, run_dir)
    flat = flatten(to_dict(config))
    planned = costs.training_flops(flat, costs.model_stats(flat))
    row = load_results([run_dir]).sort_values("step").iloc[-1]
    assert row["images_seen"] == config.train.steps * config.train.batch
    assert row["train_flops"] == pytest.approx(planned, rel=1e-6)


def test_resume_accepts_cosmetic_changes_and_keeps_the_recorded_step(synthetic, tmp_path, monkeypatch, capsys):
    """Checkpoint/log cadence may change on resume (recorded in config.yaml); anything else is
    refused without moving the recorded step back or touching the checkpoints."""
    run_dir = tmp_path / "run"
    run_until_checkpoint(monkeypatch, tiny_config(), run_dir, stop_step=4)
    # Killed right after the step-4 save: status.json already says step 2 (the save before).
    assert rundir.read_status(run_dir)["step"] == 2
    with pytest.raises(gat.train.ConfigMismatchError, match="differs at: train.batch"):
        gat.train.run(tiny_config(**{"train.batch": 4}), run_dir)
    assert rundir.read_status(run_dir)["step"] == 2
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["step"] == 4
    assert gat.train.run(tiny_config(**{"train.ckpt_every": 3, "logging.progress": "bar"}), run_dir) == "completed"
    assert "resuming with new logging.progress, train.ckpt_every" in capsys.readouterr().out
    saved = load_config(run_dir / "config.yaml")
    assert saved.train.ckpt_every == 3 and saved.logging.progress == "bar"


def test_a_damaged_stats_line_is_kept_aside(tmp_path):
    run_dir = tmp_path
    lines = ['{"step": 2, "loss_d": 1.0}', '{"step": 4, "loss_d": 0.9', '{"step": 6, "loss_d": 0.8}', '{"step": 8, "lo']
    (run_dir / "stats.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="1 damaged line"):
        rundir.truncate_stats(run_dir, 6)
    assert [r["step"] for r in rundir.read_stats(run_dir)] == [2, 6]
    assert (run_dir / "stats.jsonl.corrupt").read_text() == lines[1] + "\n"  # the torn last line is just dropped


def test_a_full_disk_fails_the_run_cleanly_and_the_rerun_resumes(synthetic, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_save = torch.save

    def disk_full_at_step_4(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 4:
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", disk_full_at_step_4)
    with pytest.raises(OSError, match="No space left"):
        gat.train.run(tiny_config(), run_dir)
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed" and "No space left on device" in status["reason"] and status["step"] == 4
    assert status["checkpoint_step"] == 2  # the last durable step, what a rerun resumes from
    assert not list(run_dir.rglob("*.tmp"))
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert gat.train.run(tiny_config(), run_dir) == "completed"  # resumes from the step-2 checkpoint


def test_an_unwritable_run_folder_is_one_error_line(synthetic, tmp_path, monkeypatch, capsys):
    def read_only(path, text):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(rundir, "write_text_atomic", read_only)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(to_dict(tiny_config())))
    assert gat.train.main([str(config), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Read-only file system") and err.count("\n") == 1 and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# Trust (issue 20): planted checkpoints, lost history, two writers, preemption signals


def _zero_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))


def _write_config(tmp_path: Path, config) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    return str(path)


def test_damaged_rolling_checkpoints_leave_the_snapshot_intact(synthetic, monkeypatch, tmp_path):
    """Defect 4's reproduction: stop at a step, truncate latest.pt, damage previous.pt."""
    config = tiny_config()
    gat.train.run(config, tmp_path / "straight")
    run_dir = tmp_path / "resumed"
    run_until_checkpoint(monkeypatch, config, run_dir, stop_step=4)
    folder = run_dir / "checkpoints"
    (folder / "latest.pt").write_bytes((folder / "latest.pt").read_bytes()[:100])
    _zero_middle(folder / "previous.pt")
    with pytest.warns(UserWarning, match="step-0000004.pt"):
        assert gat.train.run(config, run_dir) == "completed"
    # it resumed from the snapshot (a hard-linked snapshot shared the damage and the run silently
    # started over at step 0), and the history before it was neither set aside nor redone
    attempts = json.loads((run_dir / "provenance.json").read_text())["attempts"]
    assert [a["resumed_from_step"] for a in attempts] == [0, 4]
    assert not list(run_dir.glob("stats.jsonl.*"))
    assert_same_training_state(tmp_path / "straight", run_dir)


def test_no_verifying_checkpoint_is_refused_and_stats_are_kept(synthetic, monkeypatch, tmp_path, capsys):
    config = tiny_config()
    run_dir = tmp_path / "run"
    run_until_checkpoint(monkeypatch, config, run_dir, stop_step=4)
    stats = (run_dir / "stats.jsonl").read_text()
    folder = run_dir / "checkpoints"
    for name in ("latest.pt", "previous.pt", "step-0000004.pt"):
        _zero_middle(folder / name)
    path = _write_config(tmp_path, config)
    with pytest.warns(UserWarning):
        assert gat.train.main([path, "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no checkpoint verifies") and "--restart" in err[0]
    assert all(name in err[0] for name in ("latest.pt", "previous.pt", "step-0000004.pt"))
    assert (run_dir / "stats.jsonl").read_text() == stats and rundir.read_status(run_dir)["state"] == "running"
    with pytest.warns(UserWarning):
        assert gat.train.main([path, "--out", str(run_dir), "--restart"]) == 0
    assert rundir.read_status(run_dir)["state"] == "completed"
    kept = list(run_dir.glob("stats.jsonl.*"))
    assert len(kept) == 1 and kept[0].read_text() == stats  # the old history set aside, not deleted


def test_checkpoints_gone_after_a_recorded_one_are_refused(synthetic, monkeypatch, tmp_path, capsys):
    """status.json names a checkpointed step, but the folder was emptied (a cleaner, a failed
    copy): starting over at step 0 would silently lose the run, so it is the user's call."""
    config = tiny_config()
    run_dir = tmp_path / "run"
    run_until_checkpoint(monkeypatch, config, run_dir, stop_step=4)
    recorded = rundir.read_status(run_dir)["checkpoint_step"]
    assert recorded > 0
    shutil.rmtree(run_dir / "checkpoints")
    path = _write_config(tmp_path, config)
    assert gat.train.main([path, "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"records a checkpoint at step {recorded}" in err[0] and "--restart" in err[0]
    assert gat.train.main([path, "--out", str(run_dir), "--restart"]) == 0


def test_a_planted_checkpoint_does_not_run_code_in_sample(synthetic, tmp_path, capsys):
    """Defect 3's reproduction: a pickle that would act when loaded, as the only checkpoint."""
    run_dir = tmp_path / "run"
    gat.train.run(tiny_config(), run_dir)
    marker = tmp_path / "pwned"
    for path in (run_dir / "checkpoints").iterdir():
        path.unlink()
    torch.save({"step": 6, "G": Planted(marker)}, run_dir / "checkpoints" / "latest.pt")
    with pytest.warns(UserWarning, match="unreadable"):
        assert gat.sample.main([str(run_dir), "--out", str(tmp_path / "s.npz"), "--num", "4", "--device", "cpu"]) == 2
    assert not marker.exists()
    assert "error: no checkpoint verifies" in capsys.readouterr().err


class Planted:
    """Unpickling this creates a file (what a hostile checkpoint could do instead)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_second_writer_is_refused_naming_the_holder(synthetic, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = rundir.lock_writer(run_dir)  # as a running trainer holds it
    try:
        code = gat.train.main([_write_config(tmp_path, tiny_config()), "--out", str(run_dir)])
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and f"pid {os.getpid()}" in err
    assert not (run_dir / "status.json").exists()


TRUST_OVERRIDES = ("train.steps=16", "train.ckpt_every=100", "train.log_every=2", "eval.every=100",
                   "eval.extractor=none", "train.batch=8", "logging.wandb=off", "model.width=8")


def _start_and_wait_for_step(run_dir: Path, step: int, overrides: tuple[str, ...] = TRUST_OVERRIDES) -> subprocess.Popen:
    process = subprocess.Popen(_cli(run_dir, *overrides), env=CHILD_ENV, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if any(r["step"] >= step for r in rundir.read_stats(run_dir)):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before the test could act"
    return process


@pytest.mark.slow
def test_two_trainer_processes_on_one_folder(tmp_path):
    run_dir = tmp_path / "run"
    # Far more steps than the first trainer can take while the second starts up: with 16 it had
    # completed the run (on a quiet machine) before the second one asked for the lock.
    endless = (*TRUST_OVERRIDES, "train.steps=1000000")
    first = _start_and_wait_for_step(run_dir, 2, endless)
    second = subprocess.run(_cli(run_dir, *endless), env=CHILD_ENV, cwd=ROOT, capture_output=True,
                            text=True, timeout=900)
    first.kill()
    first.wait()
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr[-2000:]
    assert second.stderr.strip().splitlines()[-1].startswith("error:")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2, signal.SIGINT])
def test_a_signal_checkpoints_the_step_reached_and_resumes_bitwise(tmp_path, sig):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    subprocess.run(_cli(straight, *TRUST_OVERRIDES), env=CHILD_ENV, cwd=ROOT, check=True, capture_output=True,
                   timeout=900)
    process = _start_and_wait_for_step(stopped, 4)
    process.send_signal(sig)
    _, err = process.communicate(timeout=600)
    assert process.returncode == -sig, err[-2000:]  # what sweeps.job treats as requeue-able
    status = rundir.read_status(stopped)
    held = torch.load(stopped / "checkpoints" / "latest.pt", weights_only=False)["step"]
    assert status["state"] == "running" and 4 <= held == status["step"] == status["checkpoint_step"] < 16
    subprocess.run(_cli(stopped, *TRUST_OVERRIDES), env=CHILD_ENV, cwd=ROOT, check=True, capture_output=True,
                   timeout=900)
    assert_same_training_state(straight, stopped)
