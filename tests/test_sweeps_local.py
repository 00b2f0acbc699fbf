"""Sweep semantics on the `local` and `debug` executors (no SLURM needed).

Jobs run the stub trainer of `sweep_stub` (the `stub_trainer` fixture), so the scheduling
semantics are tested in seconds; the SLURM tests also run the real trainer end to end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps import launch, manifest, status
from sweeps.cancel import cancel_sweep
from contract.rundir import read_events
from sweep_stub import starts_per_run, stats_lines, stub_intervals, wait_for, write_grid


def run_rows(sweep: Path) -> dict[str, status.RunRow]:
    return {r.name: r for r in status.collect(sweep)}


@pytest.mark.parametrize("executor", ["local", "debug"])
def test_grid_completes_then_relaunch_submits_nothing(tmp_path, stub_trainer, executor, capsys):
    grid = write_grid(tmp_path / "g.yaml")
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", executor, "--wait"]) == 0
    rows = run_rows(sweep)
    assert [r.state for r in rows.values()] == ["completed"] * 3
    assert all(r.step == 20 and r.attempts == 1 for r in rows.values())
    data = manifest.read(sweep)
    assert len(data["runs"]) == 3 and data["grid"] == grid.read_text() and data["jobs"]
    jobs_before = len(data["jobs"])
    capsys.readouterr()
    assert launch.main([str(grid), "--out", str(sweep), "--executor", executor]) == 0
    assert "0 to submit; 3 skip (completed)" in capsys.readouterr().out
    assert len(manifest.read(sweep)["jobs"]) == jobs_before
    assert set(starts_per_run(sweep).values()) == {1}
    assert "note:" not in capsys.readouterr().out


def test_relaunch_after_grid_change_names_the_earlier_runs(tmp_path, stub_trainer, capsys):
    sweep = tmp_path / "sweep"
    assert launch.main([str(write_grid(tmp_path / "g.yaml")), "--out", str(sweep), "--executor", "debug"]) == 0
    capsys.readouterr()
    changed = write_grid(tmp_path / "g.yaml", steps=10, seed=[0])  # new base config: new run ids
    assert launch.main([str(changed), "--out", str(sweep), "--executor", "debug"]) == 0
    assert "note: 3 run(s) recorded" in capsys.readouterr().out
    assert len(manifest.read(sweep)["runs"]) == 4  # a run id is forever: nothing is dropped


def test_trainer_threads_follow_the_grid_not_the_shell(tmp_path, stub_trainer, monkeypatch):
    """CPU results repeat bit for bit only at one thread count, so the shell must not change it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    sweep = tmp_path / "sweep"
    assert launch.main([str(write_grid(tmp_path / "g.yaml", seed=[0])), "--out", str(sweep), "--executor", "debug",
                        "--wait"]) == 0
    records = [json.loads(line) for path in sweep.glob("runs/*/stub_runs.jsonl") for line in path.read_text().splitlines()]
    assert [r["omp_threads"] for r in records if "start" in r] == ["1"]  # the grid's cpus_per_task


@pytest.mark.parametrize("executor", ["local", "debug"])
def test_failing_run_is_marked_failed_others_complete(tmp_path, stub_trainer, executor, capsys):
    grid = write_grid(tmp_path / "g.yaml", zip_axes={"seed": [0, 1, 2], "data.path": [None, "/nonexistent", None]})
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", executor, "--wait"]) == 1
    rows = list(status.collect(sweep))
    failed = [r for r in rows if r.state == "failed"]
    assert len(failed) == 1 and "/nonexistent" in failed[0].reason and failed[0].attempts == 2  # retries: 1
    assert sorted(r.state for r in rows) == ["completed", "completed", "failed"]
    capsys.readouterr()
    launch.main([str(grid), "--out", str(sweep), "--executor", executor])
    assert "0 to submit" in capsys.readouterr().out
    launch.main([str(grid), "--out", str(sweep), "--executor", executor, "--rerun-failed", "--wait"])
    assert [r.attempts for r in status.collect(sweep) if r.state == "failed"] == [4]


def test_parallelism_one_never_runs_two_at_once(tmp_path, stub_trainer):
    grid = write_grid(tmp_path / "g.yaml", executor={"array_parallelism": 1})
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "local", "--wait"]) == 0
    intervals = sorted(stub_intervals(sweep))
    assert len(intervals) == 3
    assert all(end <= nxt for (_, end), (nxt, _) in zip(intervals, intervals[1:]))


def test_two_concurrent_launches_run_each_point_once(tmp_path, stub_trainer):
    grid = write_grid(tmp_path / "g.yaml", executor={"array_parallelism": 3})
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "sweeps.launch", str(grid), "--out", str(sweep), "--executor", "local", "--wait"]
    procs = [subprocess.Popen(cmd, cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert starts_per_run(sweep) and set(starts_per_run(sweep).values()) == {1}
    assert [r.state for r in status.collect(sweep)] == ["completed"] * 3


def lease_pid(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / ".sweep" / "lease").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def step_of(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "status.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def test_preempted_local_job_resumes_with_same_result(tmp_path, stub_trainer, monkeypatch):
    monkeypatch.setenv("STUB_STEP_S", "0.05")
    grid = write_grid(tmp_path / "g.yaml", steps=60, ckpt_every=10, seed=[3])
    reference, sweep = tmp_path / "reference", tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(reference), "--executor", "local", "--wait"]) == 0
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "local"]) == 0
    run_dir = wait_for(lambda: next((sweep / "runs").glob("*"), None))
    wait_for(lambda: stats_lines(run_dir) >= 25)
    os.kill(lease_pid(run_dir), signal.SIGUSR2)  # what SLURM sends before preemption/time limit
    wait_for(lambda: (run_rows(sweep)[run_dir.name].state == "completed"), timeout=120, poll=0.5)
    events = [e["event"] for e in read_events(run_dir)]
    assert events.count("interrupted") == 1 and events.count("start") == 2, events
    ref_dir = next((reference / "runs").iterdir())
    assert run_dir.name == ref_dir.name
    assert (run_dir / "stats.jsonl").read_text() == (ref_dir / "stats.jsonl").read_text()
    assert step_of(run_dir) == step_of(ref_dir) == 60


def test_cancel_then_relaunch_resumes(tmp_path, stub_trainer, monkeypatch, capsys):
    monkeypatch.setenv("STUB_STEP_S", "0.1")
    grid = write_grid(tmp_path / "g.yaml", steps=200, ckpt_every=10, seed=[0])
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "local"]) == 0
    run_dir = wait_for(lambda: next((sweep / "runs").glob("*"), None))
    wait_for(lambda: stats_lines(run_dir) >= 15)
    assert cancel_sweep(sweep)
    wait_for(lambda: run_rows(sweep)[run_dir.name].state == "interrupted", timeout=30)
    monkeypatch.setenv("STUB_STEP_S", "0.0")
    capsys.readouterr()
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "local", "--wait"]) == 0
    row = run_rows(sweep)[run_dir.name]
    assert (row.state, row.step, row.attempts) == ("completed", 200, 2)
    first_resume = [json.loads(l) for l in (run_dir / "stub_runs.jsonl").read_text().splitlines()]
    assert len([r for r in first_resume if "start" in r]) == 2


def test_cancel_only_stops_the_named_run_on_a_shared_local_worker(tmp_path, stub_trainer, monkeypatch, capsys):
    """Local workers share one list of runs; cancelling one run must not stop the other."""
    monkeypatch.setenv("STUB_STEP_S", "0.1")
    grid = write_grid(tmp_path / "g.yaml", steps=60, ckpt_every=10, seed=[0, 1])
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "local"]) == 0
    dirs = wait_for(lambda: sorted((sweep / "runs").glob("*")) if len(list((sweep / "runs").glob("*"))) == 2 else None)
    wait_for(lambda: all(stats_lines(d) >= 5 for d in dirs))
    victim, other = (d for d in dirs if "-s0-" in d.name), (d for d in dirs if "-s1-" in d.name)
    victim, other = next(victim), next(other)
    names, stopped = cancel_sweep(sweep, only="-s0-")
    assert names == [victim.name] and stopped == []  # both workers also hold s1: none is killed
    wait_for(lambda: run_rows(sweep)[other.name].state == "completed", timeout=60)
    rows = run_rows(sweep)
    assert rows[victim.name].state == "interrupted" and rows[victim.name].step < 60
    ends = [e for e in read_events(victim) if e["event"] == "end"]
    assert ends[-1]["reason"] == "cancelled by sweeps.cancel"
    with pytest.raises(launch.GridError, match="matches none"):
        cancel_sweep(sweep, only="w96")
    monkeypatch.setenv("STUB_STEP_S", "0.0")
    capsys.readouterr()
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "local", "--wait"]) == 0
    assert run_rows(sweep)[victim.name].state == "completed"


def test_status_names_the_job_that_trained_the_run(tmp_path, stub_trainer):
    from contract.rundir import append_event

    grid = write_grid(tmp_path / "g.yaml", seed=[0])
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "debug"]) == 0
    (row,) = run_rows(sweep).values()
    trained_by = row.job
    append_event(sweep / row.dir, "skip", state="completed", job_id="later-job")  # a later job found it done
    assert run_rows(sweep)[row.name].job == trained_by != "later-job"


def test_only_and_status_cli(tmp_path, stub_trainer, capsys):
    grid = write_grid(tmp_path / "g.yaml")
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "debug", "--only", "s1-"]) == 0
    capsys.readouterr()
    assert status.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 runs: 2 pending, 1 completed") and "loss_g=0.1" in out
    assert launch.main([str(grid), "--out", str(sweep), "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert table.count("skip (completed)") == 1 and table.count("submit") >= 2
    assert launch.main([str(grid), "--out", str(sweep), "--only", "nomatch"]) == 2


def test_wait_shows_what_running_jobs_do(tmp_path):
    """`launch --wait`'s progress line: a job encoding the data shows the encoder's count, a
    waiting job says so, a training job shows step/total."""
    run_dir = tmp_path / "run"
    (run_dir / ".sweep").mkdir(parents=True)
    assert status.activity(run_dir, None) == "starting"
    log = run_dir / ".sweep" / "trainer.log"
    log.write_text("encoding Fashion-MNIST (once):  10%|#         | 94/938 [00:08<01:10, 11.9batch/s]"
                   "\rencoding Fashion-MNIST (once):  88%|########8 | 53/60 [01:20<00:10, 0.66batch/s]")
    assert status.activity(run_dir, None) == "encoding Fashion-MNIST (once) 53/60"
    log.write_text("waiting for another process to finish encoding Fashion-MNIST (/cache/x)\n")
    assert status.activity(run_dir, None).startswith("waiting for another process")
    (run_dir / "config.yaml").write_text("train:\n  steps: 1500\n")
    assert status.activity(run_dir, 400) == "step 400/1500"


def test_progress_counts_the_steps_of_running_runs(tmp_path):
    """The launch's bar (and so its ETA) moves with the steps trained, not only when runs end."""
    rows = []
    for name, state, step in (("a", "completed", 1000), ("b", "running", 250), ("c", "running", 500), ("d", "pending", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("train: {steps: 1000}\n")
        rows.append(status.RunRow(name, name, name, state, step, "", 1, "", ""))
    assert status.work_done(tmp_path, rows, {"a"}) == pytest.approx(1.75)
    # weighted by planned steps: a long run counts for more than a short one
    planned = {"a": 1000, "b": 4000, "c": 500, "d": 2000}
    assert status.work_done(tmp_path, rows, {"a"}, planned) == pytest.approx(1000 + 250 / 4000 * 4000 + 500)


def test_the_launch_bar_counts_planned_steps(tmp_path, stub_trainer, capsys):
    grid = write_grid(tmp_path / "g.yaml", steps=20)
    assert launch.main([str(grid), "--out", str(tmp_path / "sweep"), "--executor", "debug", "--wait"]) == 0
    bar = capsys.readouterr().err
    assert "steps trained" in bar and "60/60" in bar  # 3 runs x 20 steps
