"""Issue 20, the sweep engine's part: a point is one run whatever its folder is called or however
its numbers are spelled, cancel stays inside its sweep, resume ignores every cosmetic key, and bad
launches fail before they write."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import tracemalloc
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from contract import config as gat_config
from contract import rundir
from gat.train import ConfigMismatchError, check_run_dir
from sweep_stub import starts_per_run, stub_intervals, write_grid
from sweeps import launch, lease, manifest, status
from sweeps.cancel import cancel_sweep
from sweeps.launch import validate_plan
from sweeps.plan import make_plan
from sweeps.spec import BUNDLED, GridError, load_grid

GOLDEN_IDS = Path(__file__).parent / "golden" / "run_ids.json"


def plan_ids(tmp_path: Path, text: str, name: str = "grid.yaml") -> list[str]:
    """Run ids of a grid written as YAML text (read by the grid loader, as a user's file is)."""
    path = tmp_path / name
    path.write_text(text)
    return [r.run_id for r in make_plan(load_grid(path), tmp_path / "sweep").runs]


def test_bundled_grid_ids_are_pinned():
    # Generated from main before issue 20: a changed id would orphan every committed run folder.
    golden = json.loads(GOLDEN_IDS.read_text())
    grids = sorted(p.name for p in BUNDLED.glob("*.yaml") if "search" not in yaml.safe_load(p.read_text()))
    assert sorted(golden) == grids
    for grid, ids in golden.items():
        assert [r.run_id for r in make_plan(load_grid(grid), Path("/nonexistent")).runs] == ids, grid


@pytest.mark.parametrize("key, spellings", [("train.steps", ("60", "60.0", "6e1")), ("seed", ("0", "0.0")),
                                            ("train.base_lr", ("1", "1.0")), ("mng.mode", ("off", "'off'"))])
def test_one_config_one_id_whatever_the_spelling(tmp_path, key, spellings):
    section, leaf = key.split(".") if "." in key else (None, key)
    for where in ("axes", "set", "base"):
        ids = set()
        for value in spellings:
            if where == "axes":
                text = f"base: fmnist_smoke.yaml\naxes: {{{key}: [{value}]}}\n"
            elif where == "set":
                text = f"base: fmnist_smoke.yaml\nset: {{{key}: {value}}}\naxes: {{model.width: [8]}}\n"
            else:
                inline = f"{{{section}: {{{leaf}: {value}}}}}" if section else f"{{{leaf}: {value}}}"
                # width 48 suits the default 6 heads: the plan derives only valid configs
                text = f"base: {inline}\naxes: {{model.width: [48]}}\n"
            ids.update(plan_ids(tmp_path, text))
        assert len(ids) == 1, (where, ids)


def test_int_field_given_a_fraction_is_an_error(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("base: fmnist_smoke.yaml\naxes: {train.steps: [60.5]}\n")
    for check in (validate_plan, lambda spec: make_plan(spec, tmp_path / "s")):  # the plan names the axis too
        with pytest.raises(GridError, match=r"axis train.steps=60.5: train.steps: expected int"):
            check(load_grid(path))


def test_moving_the_seed_into_the_axes_trains_nothing_again(tmp_path, stub_trainer, capsys):
    # Issue 20 defect 1: the run id stays, but the folder name gains "-s0-".
    sweep = tmp_path / "sweep"
    first = write_grid(tmp_path / "g.yaml", **{"model.width": [8, 16]})
    grid = yaml.safe_load(first.read_text())
    grid["set"] = {"seed": 0}
    first.write_text(yaml.safe_dump(grid))
    assert launch.main([str(first), "--out", str(sweep), "--executor", "debug", "--wait"]) == 0
    before = sorted(p.name for p in (sweep / "runs").iterdir())
    assert not any("-s0-" in name for name in before)
    del grid["set"]
    grid["axes"] = {"model.width": [8, 16], "seed": [0, 1]}
    moved = tmp_path / "moved.yaml"
    moved.write_text(yaml.safe_dump(grid))
    capsys.readouterr()
    assert launch.main([str(moved), "--out", str(sweep), "--executor", "debug", "--wait"]) == 0
    assert "4 runs selected; 2 to submit; 2 skip (completed)" in capsys.readouterr().out
    assert set(starts_per_run(sweep).values()) == {1}  # no point trained twice
    for name in before:  # the seed-0 runs are still found in their old folders
        assert starts_per_run(sweep)[name] == 1
    data = manifest.read(sweep)
    assert len(data["runs"]) == 4
    assert sorted(r["dir"] for r in data["runs"]) == sorted(f"runs/{p.name}" for p in (sweep / "runs").iterdir())
    assert all(r["coords"].get("seed") in (0, 1) for r in data["runs"])  # analysis gets a seed column
    rows = status.collect(sweep)
    assert [r.state for r in rows] == ["completed"] * 4 and {r.name for r in rows} >= set(before)


def test_a_run_recorded_under_another_name_is_found_by_id(tmp_path, stub_trainer):
    # The plan's name for an id that the manifest records under another, existing folder.
    sweep = tmp_path / "sweep"
    grid = write_grid(tmp_path / "g.yaml", seed=[0])
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "debug"]) == 0
    (old,) = (sweep / "runs").iterdir()
    renamed = old.with_name("my-run-kept-by-hand")
    old.rename(renamed)
    manifest.update(sweep, lambda d: d["runs"][0].update(dir=f"runs/{renamed.name}", name=renamed.name))
    plan = make_plan(load_grid(grid), sweep)
    assert plan.runs[0].dir == renamed
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "debug"]) == 0
    assert starts_per_run(sweep) == {renamed.name: 1}


def test_a_nested_cosmetic_key_does_not_block_resume(tmp_path, capsys):
    # Issue 20 defect 9: `--set 'logging.grid_point={seed: 0}'` on an interrupted run.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    gat_config.save_config(gat_config.load_config("fmnist_smoke.yaml"), run_dir / "config.yaml")
    again = gat_config.load_config("fmnist_smoke.yaml", ["logging.grid_point={seed: 0}"])
    check_run_dir(again, run_dir)
    assert "resuming with new logging.grid_point.seed" in capsys.readouterr().out
    with pytest.raises(ConfigMismatchError, match="differs at: seed"):
        check_run_dir(gat_config.load_config("fmnist_smoke.yaml", ["seed=1"]), run_dir)


@pytest.mark.parametrize("value", ["-1", "0"])
def test_parallelism_below_one_is_refused_before_anything_is_written(tmp_path, capsys, value):
    sweep = tmp_path / "sweep"
    grid = write_grid(tmp_path / "g.yaml")
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "local", "--parallelism", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --parallelism must be >= 1") and err.count("\n") == 1
    assert not sweep.exists()


def test_a_full_disk_is_an_environment_error_naming_the_folder(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(manifest, "write_text_atomic", full)
    sweep = tmp_path / "sweep"
    assert launch.main([str(write_grid(tmp_path / "g.yaml")), "--out", str(sweep), "--executor", "debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on device") and str(sweep) in err and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("recorded_start", ["none", "another process's"])
def test_cancel_stays_inside_the_sweep_and_signals_only_its_own_jobs(tmp_path, stub_trainer, capsys, recorded_start):
    # a job id that is now some other process: no start time recorded, or a reused pid whose
    # start time differs from the one the launch recorded
    sweep = tmp_path / "sweep"
    assert launch.main([str(write_grid(tmp_path / "g.yaml", seed=[0, 1])), "--out", str(sweep),
                        "--executor", "debug"]) == 0
    elsewhere = tmp_path / "elsewhere"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # submitit"])
    try:
        def tamper(data):
            data["runs"][0]["dir"] = "../../elsewhere"
            data["jobs"] = [{"job_id": str(bystander.pid), "run_ids": [r["run_id"] for r in data["runs"]],
                             "executor": "local"}]
            if recorded_start != "none":
                data["jobs"][0]["process_start"] = lease.process_start(bystander.pid) - 1
        manifest.update(sweep, tamper)
        capsys.readouterr()
        names, stopped = cancel_sweep(sweep)
        assert stopped == [] and bystander.poll() is None  # an unrelated process is never signalled
        assert "outside the sweep's runs/ folder" in capsys.readouterr().err
        assert not list(tmp_path.rglob("elsewhere*")) and not (sweep.parent.parent / "elsewhere").exists()
        kept = manifest.read(sweep)["runs"][1]
        assert (sweep / kept["dir"] / ".sweep" / "cancel.json").is_file()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_lease_of_a_killed_local_worker_is_stale_at_once(tmp_path, stub_trainer, capsys):
    # Weak point: a worker killed with -9 left a fresh lease; the relaunch said `skip (running)`.
    sweep = tmp_path / "sweep"
    grid = write_grid(tmp_path / "g.yaml", seed=[0])
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "debug"]) == 0
    (run_dir,) = (sweep / "runs").iterdir()
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "step": 10}))
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    path = run_dir / ".sweep" / lease.LEASE_FILE
    path.write_text(json.dumps({**lease.owner_info("1234"), "pid": worker.pid,
                                "pid_start": lease.process_start(worker.pid)}))
    assert lease.holder(path, stale_s=600) is not None  # alive: held
    worker.kill()
    worker.wait()
    assert lease.holder(path, stale_s=600) is None  # the lease is fresh, but its holder is dead
    capsys.readouterr()
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "debug", "--wait"]) == 0
    assert "1 to submit" in capsys.readouterr().out
    assert starts_per_run(sweep) == {run_dir.name: 2}
    assert [r.state for r in status.collect(sweep)] == ["completed"]


def test_a_trainer_still_checkpointing_for_a_dead_job_is_waited_for(tmp_path, stub_trainer):
    # A killed worker's trainer gets SIGTERM and checkpoints while holding the folder's writer
    # lock; the relaunch's trainer was refused the folder and the run recorded `failed`.
    sweep = tmp_path / "sweep"
    grid = write_grid(tmp_path / "g.yaml", seed=[0])
    assert launch.main([str(grid), "--out", str(sweep), "--dry-run"]) == 0
    (run,) = make_plan(load_grid(grid), sweep).runs
    run_dir = sweep / "runs" / run.name
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); "
                               "time.sleep(3)", str(run_dir / rundir.LOCK)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    released = time.time() + 3
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "debug", "--wait"]) == 0
    holder.wait()
    assert [r.state for r in status.collect(sweep)] == ["completed"]
    ((started, _),) = stub_intervals(sweep)
    assert started >= released - 0.5  # the trainer started once the holder had let go


def test_status_names_the_last_durable_step(tmp_path, stub_trainer):
    # Weak point: after a disk-full failure status.json said step 30 while latest.pt held 20.
    sweep = tmp_path / "sweep"
    assert launch.main([str(write_grid(tmp_path / "g.yaml", seed=[0])), "--out", str(sweep), "--executor", "debug"]) == 0
    (run_dir,) = (sweep / "runs").iterdir()
    (run_dir / "status.json").write_text(json.dumps({"state": "failed", "step": 30, "checkpoint_step": 20,
                                                     "reason": "OSError: No space left on device"}))
    (row,) = status.collect(sweep)
    assert (row.state, row.checkpoint_step) == ("failed", 20)
    header, line = status.render([row]).splitlines()[2:4]
    assert line.split()[header.split().index("ckpt")] == "20"


def test_slurm_without_a_controller_is_an_error_before_the_manifest(tmp_path, capsys, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("sinfo", "sbatch", "srun", "squeue", "scontrol"):
        (fake / tool).write_text("#!/bin/sh\necho 'Unable to contact slurm controller' >&2\nexit 1\n")
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    sweep = tmp_path / "sweep"
    assert launch.main([str(write_grid(tmp_path / "g.yaml")), "--out", str(sweep), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: executor slurm: no SLURM controller") and err.count("\n") == 1
    assert not sweep.exists()


def test_a_huge_dry_run_prints_a_summary_not_every_row(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yaml", seed=list(range(launch.TABLE_ROWS + 50)))
    sweep = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == launch.TABLE_ROWS + 5  # header, rule, rows, the count, rule, totals
    assert out[-3] == "... 50 more runs not shown (--only REGEX lists a subset)"
    assert out[-1].startswith(f"{launch.TABLE_ROWS + 50} runs") and not sweep.exists()


def _dry_run_peak(tmp_path: Path, seeds: int, *flags: str) -> tuple[int, Path]:
    """Peak bytes Python allocates during a --dry-run of `seeds` x 100 learning rates, and the
    file its stdout went to (a file, so the output itself is not counted)."""
    lrs = [1e-4 * (1 + i) for i in range(100)]
    grid = write_grid(tmp_path / f"g{seeds}.yaml", seed=list(range(seeds)), **{"train.base_lr": lrs})
    out = tmp_path / f"out{seeds}.txt"
    with out.open("w") as stream, redirect_stdout(stream):
        tracemalloc.start()
        try:
            assert launch.main([str(grid), "--out", str(tmp_path / "sweep"), "--dry-run", *flags]) == 0
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return peak, out


@pytest.mark.parametrize("flags", [(), ("--json",)], ids=["table", "json"])
def test_a_huge_dry_run_streams_the_plan(tmp_path, flags):
    # Issue 20: a 10^6-point dry run took 3.4 GB (each planned run holds its whole config, ~3 KB).
    # The plan now streams past; what grows per point is an id and a digest (~130 bytes).
    with open(os.devnull, "w") as sink, redirect_stdout(sink):  # imports and the model-size cache, not counted
        launch.main([str(write_grid(tmp_path / "warm.yaml")), "--out", str(tmp_path / "sweep"), "--dry-run"])
    small, _ = _dry_run_peak(tmp_path, 10, *flags)
    big, out = _dry_run_peak(tmp_path, 60, *flags)
    assert (big - small) / 5_000 < 500, f"{(big - small) / 5_000:.0f} bytes per point"
    if flags:
        assert len(json.loads(out.read_text())) == 6_000
    else:
        assert out.read_text().splitlines()[-1].startswith("6000 runs (0 duplicate points merged); would submit 6000")


def test_streamed_dry_run_json_is_the_array_as_before(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yaml", **{"model.width": [8, 16], "seed": [0, 1]})
    assert launch.main([str(grid), "--out", str(tmp_path / "sweep"), "--dry-run", "--json"]) == 0
    out = capsys.readouterr().out
    assert out == json.dumps(json.loads(out), indent=1) + "\n" and len(json.loads(out)) == 4
    assert launch.main([str(grid), "--out", str(tmp_path / "sweep"), "--dry-run", "--json", "--only", "nomatch"]) == 2
    assert capsys.readouterr().out == ""  # the error comes before any of the array

