"""Sweeps on a real SLURM cluster (`WITH_DBD=1 bash scripts/slurm_up.sh`).

Skipped where `sinfo` does not answer, failed instead when GATSCALE_REQUIRE_SLURM=1. Most tests
use the stub trainer of test_sweeps_local (scheduling semantics in seconds); the last one runs the
real trainer end to end on a fmnist_smoke-sized grid.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweeps import launch, manifest, status
from sweeps.executors import slurm_available
from contract.rundir import read_events
from sweep_stub import lift_requeue_hold, preempt, starts_per_run, stats_lines, stub_intervals, wait_for, write_grid

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def slurm_cluster():
    """The local cluster must answer; GATSCALE_REQUIRE_SLURM=1 turns a skip into a failure."""
    if not slurm_available():
        message = "no SLURM cluster answers (start one: WITH_DBD=1 bash scripts/slurm_up.sh)"
        if os.environ.get("GATSCALE_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


def real_smoke_grid(path: Path, fixed: dict, executor: dict, **points) -> Path:
    """A grid of real gat.train runs on the fmnist_smoke config, one CPU each; `points` holds
    its axes/zip sections."""
    if os.environ.get("GATSCALE_TEST_FMNIST_VAE"):  # a stand-in VAE where the committed one is absent
        fixed = {**fixed, "data.vae": os.environ["GATSCALE_TEST_FMNIST_VAE"]}
    path.write_text(yaml.safe_dump({"base": "gat/configs/fmnist_smoke.yaml", "set": fixed, **points,
                                    "resources": {"gpus": 0, "cpus_per_task": 1, "timeout_min": 20},
                                    "executor": executor}))
    return path


def slurm_job_ids(sweep: Path) -> list[str]:
    return [j["job_id"] for j in manifest.read(sweep)["jobs"]]


def test_grid_completes_and_relaunch_submits_nothing(slurm_cluster, stub_trainer, tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yaml")
    sweep = tmp_path / "sweep"  # jobs run on this host: pytest's tmp is shared
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm", "--wait"]) == 0
    assert [r.state for r in status.collect(sweep)] == ["completed"] * 3
    ids = slurm_job_ids(sweep)
    assert len(ids) == 3 and len({i.split("_")[0] for i in ids}) == 1  # one array job
    capsys.readouterr()
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm"]) == 0
    assert "0 to submit" in capsys.readouterr().out
    assert slurm_job_ids(sweep) == ids
    assert set(starts_per_run(sweep).values()) == {1}


def test_failing_run_marked_failed_others_complete(slurm_cluster, stub_trainer, tmp_path):
    grid = write_grid(tmp_path / "g.yaml", zip_axes={"seed": [0, 1, 2], "data.path": [None, "/nonexistent", None]})
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm", "--wait"]) == 1
    rows = status.collect(sweep)
    assert sorted(r.state for r in rows) == ["completed", "completed", "failed"]
    (failed,) = [r for r in rows if r.state == "failed"]
    assert "/nonexistent" in failed.reason
    # the array task of the failed run ends FAILED in the scheduler too (sacct needs slurmdbd)
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", failed.job],
                         capture_output=True, text=True).stdout
    assert "FAILED" in out or out == ""


def test_parallelism_one_is_honoured(slurm_cluster, stub_trainer, tmp_path):
    grid = write_grid(tmp_path / "g.yaml", executor={"array_parallelism": 1})
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm", "--wait"]) == 0
    intervals = sorted(stub_intervals(sweep))
    assert len(intervals) == 3
    assert all(end <= nxt for (_, end), (nxt, _) in zip(intervals, intervals[1:]))


def test_two_concurrent_launches_run_each_point_once(slurm_cluster, stub_trainer, tmp_path):
    grid = write_grid(tmp_path / "g.yaml", executor={"array_parallelism": 3})
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "sweeps.launch", str(grid), "--out", str(sweep), "--executor", "slurm", "--wait"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [r.state for r in status.collect(sweep)] == ["completed"] * 3
    assert set(starts_per_run(sweep).values()) == {1}


def test_preempted_job_resumes_with_same_result(slurm_cluster, stub_trainer, tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_STEP_S", "0.05")
    grid = write_grid(tmp_path / "g.yaml", steps=80, ckpt_every=10, seed=[5])
    reference, sweep = tmp_path / "reference", tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(reference), "--executor", "debug"]) == 0
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm"]) == 0
    run_dir = wait_for(lambda: next((sweep / "runs").glob("*"), None), timeout=60)
    wait_for(lambda: stats_lines(run_dir) >= 25, timeout=60)
    preempt(slurm_job_ids(sweep)[0])
    wait_for(lambda: status.collect(sweep)[0].state == "completed", timeout=180, poll=0.5)
    events = read_events(run_dir)
    assert [e["event"] for e in events].count("interrupted") == 1
    assert [e["restart"] for e in events if e["event"] == "start"] == [0, 1]
    ref_dir = next((reference / "runs").iterdir())
    assert (run_dir / "stats.jsonl").read_text() == (ref_dir / "stats.jsonl").read_text()


def test_real_trainer_end_to_end(slurm_cluster, tmp_path, monkeypatch):
    """Three fmnist_smoke-sized runs through gat.train: one fails at start (missing data path),
    two complete; one of those is preempted mid-run and ends with the same stats as the other
    launch of the same config run without interruption."""
    monkeypatch.delenv("GATSCALE_TRAINER", raising=False)
    # 400 steps (~15 s at ~0.04 s a step) so the preemption lands mid-run: at 20 steps the run
    # had finished before the signal arrived, and the test saw one attempt instead of two.
    fixed = {"train.steps": 400, "train.log_every": 5, "train.ckpt_every": 10, "eval.every": 200,
             "eval.num_samples": 64}
    grid = real_smoke_grid(tmp_path / "smoke.yaml", fixed,
                           {"array_parallelism": 2, "retries": 0, "lease_heartbeat_s": 2, "lease_stale_s": 20},
                           zip=[{"seed": [0, 1, 2], "data.path": [None, None, "/nonexistent/fmnist"]}])
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm"]) == 0
    by_seed = {r["coords"]["seed"]: r for r in manifest.read(sweep)["runs"]}
    target = sweep / by_seed[0]["dir"]
    # past the first checkpoint (or failed at start: then say why at once)
    wait_for(lambda: stats_lines(target) >= 2 or status.collect(sweep)[0].state == "failed", timeout=300, poll=0.2)
    first = {r.run_id: r for r in status.collect(sweep)}[by_seed[0]["run_id"]]
    assert first.state != "failed", f"the trainer failed: {first.reason}"
    job = next(j["job_id"] for j in manifest.read(sweep)["jobs"] if by_seed[0]["run_id"] in j["run_ids"])
    preempt(job)
    states = status.watch(sweep, [r["run_id"] for r in by_seed.values()], 20)
    assert (states[by_seed[0]["run_id"]], states[by_seed[1]["run_id"]], states[by_seed[2]["run_id"]]) == (
        "completed", "completed", "failed")
    rows = {r.run_id: r for r in status.collect(sweep)}
    assert "/nonexistent/fmnist" in rows[by_seed[2]["run_id"]].reason
    assert rows[by_seed[0]["run_id"]].attempts == 2 and rows[by_seed[0]["run_id"]].step == 400
    # an uninterrupted run of the same config, for comparison
    reference = tmp_path / "reference"
    assert launch.main([str(grid), "--out", str(reference), "--executor", "slurm", "--only", "s0-", "--wait"]) == 0
    ref = reference / by_seed[0]["dir"]

    def losses(run: Path) -> list[tuple]:
        return [(r["step"], r["loss_d"], r["loss_g"]) for r in map(json.loads, (run / "stats.jsonl").read_text().splitlines())]

    assert losses(target) == losses(ref)


def test_sigterm_to_the_trainer_requeues_and_resumes_at_the_signal_step(slurm_cluster, tmp_path, monkeypatch):
    """SLURM's SIGTERM reaches the trainer (submitit ignores it in the job): the trainer
    checkpoints the step it reached, the job requeues itself, and the resumed run starts at that
    step and ends with the stats of an uninterrupted run, bit for bit. No regular checkpoint falls
    mid-run, so only the signal's checkpoint can explain where it resumed."""
    monkeypatch.delenv("GATSCALE_TRAINER", raising=False)
    fixed = {"train.steps": 400, "train.log_every": 5, "train.ckpt_every": 1000, "eval.every": 400,
             "eval.num_samples": 64, "seed": 7}
    grid = real_smoke_grid(tmp_path / "term.yaml", fixed, {"retries": 0, "lease_heartbeat_s": 2, "lease_stale_s": 20},
                           axes={"train.batch": [16]})
    sweep, reference = tmp_path / "sweep", tmp_path / "reference"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm"]) == 0
    (run,) = manifest.read(sweep)["runs"]
    target = sweep / run["dir"]
    wait_for(lambda: stats_lines(target) >= 2 and trainer_pids(target), timeout=300, poll=0.2)
    for pid in trainer_pids(target):
        os.kill(pid, signal.SIGTERM)
    (job,) = slurm_job_ids(sweep)
    lift_requeue_hold(job)
    assert status.watch(sweep, [run["run_id"]], 20) == {run["run_id"]: "completed"}
    events = read_events(target)
    assert [e["event"] for e in events].count("interrupted") == 1
    assert [e["restart"] for e in events if e["event"] == "start"] == [0, 1]
    attempts = json.loads((target / "provenance.json").read_text())["attempts"]
    resumed = attempts[1]["resumed_from_step"]
    assert len(attempts) == 2 and 10 <= resumed < 400, attempts  # the signal's step: no other checkpoint
    assert launch.main([str(grid), "--out", str(reference), "--executor", "slurm", "--wait"]) == 0
    assert training_record(target) == training_record(reference / run["dir"])


def training_record(run_dir: Path) -> list[dict]:
    """Every stats line without its timing and memory fields, which differ between any two runs."""
    lines = map(json.loads, (run_dir / "stats.jsonl").read_text().splitlines())
    return [{k: v for k, v in line.items() if k not in ("wall_s", "sec_per_step", "images_per_s", "peak_mem_mb")} for line in lines]


def trainer_pids(run_dir: Path) -> list[int]:
    """PIDs of the trainer processes working on a run folder."""
    out = subprocess.run(["pgrep", "-f", f"{run_dir}/.sweep/request.yaml"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def damage_checkpoint(path: Path) -> None:
    """Overwrite 4 KB inside a checkpoint's tensor data with zeros (the file still unpickles)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    data[start : start + 4096] = bytes(4096)
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_chaos_ends_with_the_undisturbed_results(slurm_cluster, tmp_path, monkeypatch):
    """Four tiny real runs on SLURM while trainers are killed with -9, one job is scancelled,
    another requeued, and a stopped run's checkpoint is damaged in place. Relaunching until
    everything is final gives every run the stats and metrics of an undisturbed sweep."""
    monkeypatch.delenv("GATSCALE_TRAINER", raising=False)
    fixed = {"train.steps": 80, "train.log_every": 5, "train.ckpt_every": 5, "train.snapshot_every": 80,
             "eval.every": 40, "eval.num_samples": 64}
    grid = real_smoke_grid(tmp_path / "chaos.yaml", fixed,
                           {"array_parallelism": 4, "retries": 3, "lease_heartbeat_s": 1, "lease_stale_s": 8},
                           axes={"seed": [0, 1, 2, 3]})
    reference, sweep = tmp_path / "reference", tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(reference), "--executor", "local", "--wait"]) == 0
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm"]) == 0
    runs = {r["coords"]["seed"]: r for r in manifest.read(sweep)["runs"]}
    folder = {seed: sweep / r["dir"] for seed, r in runs.items()}
    job_of = {seed: next(j["job_id"] for j in manifest.read(sweep)["jobs"] if r["run_id"] in j["run_ids"])
              for seed, r in runs.items()}

    def mid_run(seed: int) -> bool:
        return stats_lines(folder[seed]) >= 2 and bool(trainer_pids(folder[seed]))

    faults = []
    wait_for(lambda: mid_run(0), timeout=300, poll=0.2)
    for pid in trainer_pids(folder[0]):  # kill -9 a trainer: the job retries, the run resumes
        os.kill(pid, 9)
    faults.append("kill -9 trainer of seed 0")
    wait_for(lambda: mid_run(1), timeout=300, poll=0.2)
    subprocess.run(["scancel", job_of[1]], check=True)  # the run is left interrupted
    faults.append("scancel seed 1")
    wait_for(lambda: mid_run(2), timeout=300, poll=0.2)
    subprocess.run(["scontrol", "requeue", job_of[2]], check=True)
    faults.append("requeue seed 2")
    wait_for(lambda: mid_run(3), timeout=300, poll=0.2)
    for pid in trainer_pids(folder[3]):
        os.kill(pid, 9)
    faults.append("kill -9 trainer of seed 3")
    # the scancelled run is stopped: damage its newest checkpoint in place
    wait_for(lambda: not trainer_pids(folder[1]), timeout=60)
    damage_checkpoint(folder[1] / "checkpoints" / "latest.pt")
    faults.append("damaged seed 1's latest.pt")
    # a requeued job waits for its BeginTime (SLURM's requeue hold): lift it, as an operator would
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"jobid={job_of[2]}", "StartTime=now"], check=False)

    ids = [r["run_id"] for r in runs.values()]
    for _ in range(4):  # relaunch until everything is final
        if all(s == "completed" for s in status.watch(sweep, ids, 8).values()):
            break
        launch.main([str(grid), "--out", str(sweep), "--executor", "slurm"])
    rows = {r.run_id: r for r in status.collect(sweep)}
    assert {r.state for r in rows.values()} == {"completed"}, (faults, [(r.name, r.state, r.reason) for r in rows.values()])
    assert "latest.pt is unreadable" in (folder[1] / ".sweep" / "trainer.log").read_text()  # skipped, never resumed from

    def record(run: Path) -> list[tuple]:
        lines = map(json.loads, (run / "stats.jsonl").read_text().splitlines())
        return [(r["step"], r["loss_d"], r["loss_g"], r.get("metrics")) for r in lines]

    for seed, run in runs.items():
        assert record(folder[seed]) == record(reference / run["dir"]), (seed, faults)
    assert all(rows[runs[seed]["run_id"]].attempts >= 2 for seed in (0, 1, 3))
