"""Packing (issue 25): `resources: {pack: {runs_per_job: N}}` puts N runs into one job.

Fast tests: the grid's checks, the planner's packs, the dry run's columns and JSON, the packed
sbatch script (golden), and a pack on the local executor. The `slurm` tests run packs of the stub
trainer on the real cluster: a crash stays its own run's, a requeued pack resumes each run
exactly (preempted, or one trainer killed by SIGTERM: one requeue for the pack), and cancelling
one run leaves its neighbour running while a relaunch packs what is left.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from contract.rundir import read_events
from sweeps import cancel, launch, manifest, status, submit
from sweeps.resources import Resources, packs, parse
from sweeps.spec import ExecutorSpec, GridError
from sweep_stub import golden_sbatch, lift_requeue_hold, preempt, starts_per_run, stats_lines, wait_for, write_grid

def packed_grid(path: Path, runs_per_job: int = 2, cpus: int = 2, **kwargs) -> Path:
    """The stub's 3-run grid (see sweep_stub.write_grid) with a pack of `runs_per_job` on `cpus` cores."""
    write_grid(path, **kwargs)
    grid = yaml.safe_load(path.read_text())
    grid["resources"].update(cpus_per_task=cpus, pack={"runs_per_job": runs_per_job})
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.mark.parametrize("section, message", [
    ({"pack": {"runs_per_job": 3}, "cpus_per_task": 2}, "resources.pack.runs_per_job: 3 runs is more than the job's cpus_per_task=2"),
    ({"pack": {"runs_per_job": 4}, "gpus": 2, "cpus_per_task": 8}, "more than the job's 2 GPUs allow"),
    ({"pack": {"runs_per_job": 2}, "gpus": 4, "cpus_per_task": 8}, "multi-GPU (DDP)"),
    ({"pack": {"runs_per_job": 2}, "gpus": 1, "nodes": 2, "cpus_per_task": 8}, "multi-node (DDP)"),
    ({"pack": {"runs_per_job": 2}, "cpus_per_task": 2, "rules": [{"when": {"seed": 0}, "gpus": 4}]},
     "resources.rules[0].pack.runs_per_job: 2 runs on 4 GPUs"),
    ({"pack": {"runs_per_job": 0}}, "resources.pack.runs_per_job: 0 is out of range"),
    ({"pack": {"runs": 2}}, "unknown key resources.pack.runs"),
    ({"pack": 2}, "resources.pack: expected a mapping"),
])
def test_bad_packs_name_the_key(section, message):
    with pytest.raises(GridError) as err:
        parse(section)
    assert message in str(err.value)


def test_a_rule_may_unpack_its_runs():
    defaults, rules, _ = parse({"pack": {"runs_per_job": 2}, "cpus_per_task": 2,
                                "rules": [{"when": {"seed": 0}, "gpus": 4, "pack": {"runs_per_job": 1}}]})
    assert defaults.pack == 2 and rules[0][1] == {"gpus": 4, "pack": 1}
    assert parse({})[0] == Resources()  # unpacked by default


def test_packs_group_equal_resources_in_order():
    a, b = Resources(cpus_per_task=2, pack=2), Resources(cpus_per_task=4, pack=2)
    items = [(1, a), (2, b), (3, a), (4, a), (5, b)]
    assert packs(items) == [(a, [[1, 3], [4]]), (b, [[2, 5]])]
    assert packs([(1, Resources()), (2, Resources())]) == [(Resources(), [[1], [2]])]  # unpacked: one run each


def test_dry_run_shows_packs_savings_and_hours(tmp_path, capsys):
    grid = packed_grid(tmp_path / "g.yaml", seed=[0, 1, 2], **{"model.width": [32, 64]})
    out = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "packing: 6 runs to submit in 3 job(s), 3 allocation(s) saved" in text
    assert "packed vs" in text and "(pack 2)" in text
    assert launch.main([str(grid), "--out", str(out), "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["pack"] for r in rows) == [0, 0, 1, 1, 2, 2]
    by_pack: dict[int, set[int]] = {}
    for row in rows:
        by_pack.setdefault(row["pack"], set()).add(row["model.width"])
    assert by_pack[0] == {64} and by_pack[2] == {32}  # longest first, so a pack's runs are alike
    assert not out.exists()


def test_dry_run_packs_are_the_jobs_launch_submits(tmp_path, capsys, monkeypatch):
    """The dry run's `pack` of each run is the index of the SLURM job the launch puts it in
    (the scheduler stubbed out: jobs are recorded, not run)."""
    grid = packed_grid(tmp_path / "g.yaml", seed=[0, 1, 2], **{"model.width": [32, 48, 64]})
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--dry-run", "--json"]) == 0
    planned: dict[int, set[str]] = {}
    for row in json.loads(capsys.readouterr().out):
        planned.setdefault(row["pack"], set()).add(row["run_id"])

    class Job:
        def __init__(self, index: int) -> None:
            self.job_id = f"1_{index}"

    monkeypatch.setattr(launch.executors, "slurm_available", lambda: True)
    monkeypatch.setattr(submit.executors, "make_executor", lambda *args, **kwargs: None)
    monkeypatch.setattr(submit.executors, "submit", lambda kind, ex, fns, root: [Job(i) for i in range(len(fns))])
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm"]) == 0
    jobs = manifest.read(sweep)["jobs"]
    assert [set(job["run_ids"]) for job in jobs] == [planned[i] for i in range(len(planned))]
    assert len(jobs) == 5 and all(job["resources"]["pack"] == 2 for job in jobs)


def test_unpacked_dry_run_has_no_pack_column(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yaml")
    assert launch.main([str(grid), "--out", str(tmp_path / "s"), "--dry-run"]) == 0
    assert "pack" not in capsys.readouterr().out
    assert launch.main([str(grid), "--out", str(tmp_path / "s"), "--dry-run", "--json"]) == 0
    assert all("pack" not in row for row in json.loads(capsys.readouterr().out))


def test_bad_pack_fails_before_anything_is_written(tmp_path, capsys):
    grid = packed_grid(tmp_path / "g.yaml", runs_per_job=3, cpus=2)
    assert launch.main([str(grid), "--out", str(tmp_path / "sweep"), "--executor", "debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: resources.pack.runs_per_job") and err.count("\n") == 1
    assert not (tmp_path / "sweep").exists()


def test_golden_sbatch_packed(tmp_path):
    """A pack of 4 single-GPU runs: one task (the pack's process runs them), 4 GPUs, the
    pack's cores. Regenerate with GATSCALE_REGEN_GOLDEN=1."""
    spec = ExecutorSpec(partition="gpu", account="scaling", setup=["module load cuda/12.4"])
    res = Resources(gpus=4, nodes=1, cpus_per_task=16, mem_gb=240, timeout_min=240, pack=4)
    text = golden_sbatch(tmp_path, spec, res, name="gatscale-pack", array_size=5, golden="pack4_gpu.sbatch")
    for line in ("--ntasks-per-node=1", "--gpus-per-node=4", "--cpus-per-task=16", "--requeue"):
        assert line in text


def run_of(sweep: Path, seed: int) -> dict:
    return next(r for r in manifest.read(sweep)["runs"] if r["coords"]["seed"] == seed)


def test_local_pack_runs_side_by_side_and_a_crash_stays_its_own(tmp_path, stub_trainer):
    grid = packed_grid(tmp_path / "g.yaml", executor={"array_parallelism": 1, "retries": 0},
                       zip_axes={"seed": [0, 1], "data.path": [None, "/nonexistent"]})
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "local", "--wait"]) == 1
    rows = {r.run_id: r for r in status.collect(sweep)}
    assert rows[run_of(sweep, 0)["run_id"]].state == "completed"
    failed = rows[run_of(sweep, 1)["run_id"]]
    assert failed.state == "failed" and "/nonexistent" in failed.reason
    (job,) = manifest.read(sweep)["jobs"]
    assert len(job["run_ids"]) == 2 and job["resources"]["pack"] == 2
    assert set(started(sweep, "omp_threads")) == {"1"}  # the job's 2 cores split between its 2 runs


def started(sweep: Path, key: str) -> list:
    """`key` of every stub start in the sweep, as the stub saw its environment."""
    return [json.loads(line).get(key) for p in sorted(sweep.glob("runs/*/stub_runs.jsonl"))
            for line in p.read_text().splitlines() if "start" in line]


@pytest.mark.parametrize("job_devices, seen", [(None, ["0", "1"]), ("4,6", ["4", "6"])])
def test_a_pack_with_a_gpu_per_run_gives_each_its_own(tmp_path, stub_trainer, monkeypatch, job_devices, seen):
    """gpus == runs_per_job: each run sees one of the job's GPUs (those SLURM names, else 0..N-1);
    with gpus: 1 the runs share the job's view."""
    if job_devices is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", job_devices)
    for gpus, sweep in ((2, tmp_path / "own"), (1, tmp_path / "shared")):
        grid = packed_grid(tmp_path / f"g{gpus}.yaml", seed=[0, 1])
        data = yaml.safe_load(grid.read_text())
        data["resources"]["gpus"] = gpus
        grid.write_text(yaml.safe_dump(data))
        assert launch.main([str(grid), "--out", str(sweep), "--executor", "debug"]) == 0
    assert sorted(started(tmp_path / "own", "cuda_devices")) == seen
    assert started(tmp_path / "shared", "cuda_devices") == [job_devices] * 2


# ---- real SLURM -----------------------------------------------------------------------------


@pytest.mark.slurm
def test_slurm_pack_with_a_crash_completes_the_other(stub_trainer, tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_STEP_S", "0.05")
    grid = packed_grid(tmp_path / "g.yaml", steps=40, executor={"retries": 0},
                       zip_axes={"seed": [0, 1], "data.path": [None, "/nonexistent"]})
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm", "--wait"]) == 1
    rows = {r.run_id: r for r in status.collect(sweep)}
    done, crashed = rows[run_of(sweep, 0)["run_id"]], rows[run_of(sweep, 1)["run_id"]]
    assert (done.state, done.step, crashed.state) == ("completed", 40, "failed")
    assert "/nonexistent" in crashed.reason and "/nonexistent" not in (done.reason or "")
    (job,) = manifest.read(sweep)["jobs"]
    assert len(job["run_ids"]) == 2 and done.job == crashed.job == job["job_id"]
    assert (sweep / run_of(sweep, 1)["dir"] / ".sweep" / "trainer.log").exists()  # each run its own log


@pytest.mark.slurm
def test_slurm_requeued_pack_resumes_each_run_exactly(stub_trainer, tmp_path, monkeypatch):
    """One run of the pack finishes before the preemption and is not rerun; the other resumes
    from its own checkpoint and ends with the stats of an uninterrupted run."""
    monkeypatch.setenv("STUB_STEP_S", "0.05")
    grid = packed_grid(tmp_path / "g.yaml", ckpt_every=10, zip_axes={"seed": [3, 4], "train.steps": [10, 120]})
    reference, sweep = tmp_path / "reference", tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(reference), "--executor", "debug"]) == 0
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm"]) == 0
    short, long = (sweep / run_of(sweep, seed)["dir"] for seed in (3, 4))
    wait_for(lambda: stats_lines(long) >= 30 and (short / "status.json").exists()
             and json.loads((short / "status.json").read_text())["state"] == "completed", timeout=120)
    (job,) = manifest.read(sweep)["jobs"]
    preempt(job["job_id"])
    wait_for(lambda: [r.state for r in status.collect(sweep)] == ["completed"] * 2, timeout=180, poll=0.5)
    assert starts_per_run(sweep) == {short.name: 1, long.name: 2}
    events = read_events(long)
    assert [e["event"] for e in events].count("interrupted") == 1
    assert [e["restart"] for e in events if e["event"] == "start"] == [0, 1]
    for run in (short, long):
        assert (run / "stats.jsonl").read_text() == (reference / "runs" / run.name / "stats.jsonl").read_text()


@pytest.mark.slurm
def test_slurm_cancel_one_run_of_a_pack_then_relaunch_packs_what_is_left(stub_trainer, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STUB_STEP_S", "0.05")
    grid = packed_grid(tmp_path / "g.yaml", steps=150, seed=[0, 1])
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm"]) == 0
    target, neighbour = (sweep / run_of(sweep, seed)["dir"] for seed in (0, 1))
    # both past step 5 while the target is unfinished: the pack's runs train side by side
    wait_for(lambda: stats_lines(target) >= 5 and stats_lines(neighbour) >= 5, timeout=120)
    assert cancel.main([str(sweep), "--only", target.name]) == 0
    assert "0 job(s) holding only those runs stopped" in capsys.readouterr().out  # the job keeps running
    wait_for(lambda: {r.name: r.state for r in status.collect(sweep)}[target.name] == "interrupted", timeout=60)
    stopped_at = stats_lines(target)
    assert status.watch(sweep, [run_of(sweep, 1)["run_id"]], 6) == {run_of(sweep, 1)["run_id"]: "completed"}
    assert stats_lines(target) == stopped_at < 150
    capsys.readouterr()
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm", "--wait"]) == 0
    assert "1 to submit" in capsys.readouterr().out
    first, second = manifest.read(sweep)["jobs"]
    assert len(first["run_ids"]) == 2 and second["run_ids"] == [run_of(sweep, 0)["run_id"]]
    assert [r.state for r in status.collect(sweep)] == ["completed"] * 2
    assert starts_per_run(sweep) == {target.name: 2, neighbour.name: 1}


@pytest.mark.slurm
def test_slurm_sigterm_to_one_trainer_requeues_the_pack_once(stub_trainer, tmp_path, monkeypatch):
    """A trainer of a pack stopped by SIGTERM alone (an admin's kill; SLURM's reaches them all)
    requeues the pack once: both runs are interrupted once and resume to the stats of an
    uninterrupted run."""
    monkeypatch.setenv("STUB_STEP_S", "0.05")
    grid = packed_grid(tmp_path / "g.yaml", steps=300, ckpt_every=10, seed=[0, 1])
    reference, sweep = tmp_path / "reference", tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(reference), "--executor", "debug"]) == 0
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "slurm"]) == 0
    runs = [sweep / run_of(sweep, seed)["dir"] for seed in (0, 1)]
    wait_for(lambda: all(stats_lines(run) >= 20 for run in runs), timeout=120)
    pid = json.loads((runs[0] / "stub_runs.jsonl").read_text().splitlines()[0])["pid"]
    os.kill(pid, signal.SIGTERM)
    (job,) = manifest.read(sweep)["jobs"]
    lift_requeue_hold(job["job_id"])
    wait_for(lambda: [r.state for r in status.collect(sweep)] == ["completed"] * 2, timeout=180, poll=0.5)
    for run in runs:
        events = [e["event"] for e in read_events(run)]
        assert events.count("interrupted") == 1 and events.count("start") == 2, (run.name, events)
        assert (run / "stats.jsonl").read_text() == (reference / "runs" / run.name / "stats.jsonl").read_text()
