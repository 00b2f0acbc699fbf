"""Run identity, status derivation, leases, the manifest, and the golden sbatch script."""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from contract import config as gat_config
from sweeps import launch, lease, manifest
from contract.config import flatten
from sweeps.plan import make_plan, run_id, run_status, status_reader
from sweeps.resources import Resources, parse, resolve
from sweeps.spec import ExecutorSpec, GridError, expand, load_grid, parse_grid, point_config
from sweep_stub import golden_sbatch

BASE = {"model": {"width": 32, "depth": 4, "heads": 2}, "train": {"steps": 10, "base_lr": 1e-4}}


def spec_of(**sections):
    return parse_grid({"base": BASE, **sections})


def test_the_plans_config_is_the_trainers():
    spec = spec_of(axes={"model.width": [32, 64], "train.base_lr": [1, 2e-4], "mng.mode": ["exp", "off"]})
    plan = make_plan(spec, Path("/tmp/none"))
    for run, point in zip(plan.runs, expand(spec)):
        resolved = flatten(gat_config.to_dict(gat_config.from_dict(point_config(spec, point))))
        assert run.flat == resolved and list(run.flat) == list(resolved)  # same keys, same order


def test_model_name_resolves_like_the_trainer():
    spec = parse_grid({"axes": {"model.name": ["GAT-S/2"]}})
    (run,) = make_plan(spec, Path("/tmp/none")).runs
    # The trainer's config is the plan's plus the sweep's W&B context (cosmetic keys).
    assert {**run.flat, **run.wandb_context()} == flatten(gat_config.to_dict(gat_config.from_dict(run.config())))


def test_id_ignores_cosmetic_keys_but_not_results():
    a = make_plan(spec_of(axes={"seed": [0]}), Path("/s")).runs[0]
    cosmetic = make_plan(spec_of(axes={"seed": [0]}, set={"logging.wandb": "online", "data.num_workers": 8,
                                                         "train.ckpt_every": 7}), Path("/s")).runs[0]
    other = make_plan(spec_of(axes={"seed": [0]}, set={"eval.every": 7}), Path("/s")).runs[0]
    assert a.run_id == cosmetic.run_id != other.run_id
    assert run_id(a.flat) == a.run_id and re.fullmatch(r"[0-9a-f]{8}", a.run_id)


def test_names_are_descriptive_and_duplicates_merge():
    spec = spec_of(axes={"train.lr_rule": ["width_aware"], "mng.mode": ["exp"], "seed": [0],
                         "logging.progress": ["bar", "lines"]})
    plan = make_plan(spec, Path("/s"))
    assert len(plan.runs) == 1 and plan.merged == 1
    assert re.fullmatch(r"w32-d4-p2-lr_width_aware-mng_exp-s0-progress_bar-[0-9a-f]{8}", plan.runs[0].name)


def test_status_derivation(tmp_path):
    run = tmp_path / "r"
    assert run_status(run, 60).state == "pending"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"state": "running", "step": 3, "reason": None}))
    assert run_status(run, 60).state == "interrupted"  # nobody holds the lease
    held = lease.acquire(run / ".sweep" / "lease", "job1", stale_s=60, heartbeat_s=1)
    assert run_status(run, 60).state == "running"
    held.release()
    (run / "status.json").write_text(json.dumps({"state": "failed", "step": 0, "reason": "boom"}))
    assert (run_status(run, 60).state, run_status(run, 60).reason) == ("failed", "boom")


def test_lease_exclusive_stale_takeover_and_adoption(tmp_path):
    path = tmp_path / "lease"
    first = lease.acquire(path, "10_1", stale_s=0.5, heartbeat_s=0.1)
    assert first is not None
    assert lease.acquire(path, "11_0", stale_s=0.5, heartbeat_s=0.1) is None
    adopted = lease.acquire(path, "10_1", stale_s=0.5, heartbeat_s=0.1)  # same job, requeued
    assert adopted is not None and not first.owned()
    first.start_heartbeat()
    time.sleep(0.3)
    assert first.lost.is_set()  # its heartbeat notices the lease is no longer its own
    time.sleep(0.6)  # adopted never beats: stale now
    taker = lease.acquire(path, "12_0", stale_s=0.5, heartbeat_s=0.1)
    assert taker is not None and taker.owned()
    taker.release()
    assert not path.exists()


def test_lease_heartbeat_keeps_it_alive(tmp_path):
    path = tmp_path / "lease"
    held = lease.acquire(path, "a", stale_s=0.5, heartbeat_s=0.1)
    held.start_heartbeat()
    time.sleep(1.0)
    assert lease.acquire(path, "b", stale_s=0.5, heartbeat_s=0.1) is None
    held.release()


def test_lease_race_has_one_winner(tmp_path):
    path = tmp_path / "lease"
    (tmp_path / "lease").write_text(json.dumps({"token": "dead", "job_id": "0"}))
    os.utime(path, (time.time() - 100, time.time() - 100))  # a stale lease everyone wants
    winners = []
    barrier = threading.Barrier(8)

    def take(i):
        barrier.wait()
        got = lease.acquire(path, f"job{i}", stale_s=5, heartbeat_s=1)
        if got is not None:
            winners.append(got)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(winners) == 1 and winners[0].owned()


def test_manifest_updates_do_not_lose_writes(tmp_path):
    def add(i):
        manifest.update(tmp_path, lambda d: d["jobs"].append({"job_id": str(i), "run_ids": []}))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(10)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(int(j["job_id"]) for j in manifest.read(tmp_path)["jobs"]) == list(range(10))


def test_resource_rules_first_match():
    defaults, rules, _ = parse({"gpus": 1, "timeout_min": 60, "rules": [
        {"when": {"model.width": ">=1024", "model.patch": 2}, "gpus": 8},
        {"when": {"params": ">=1e8"}, "gpus": 4},
        {"when": {"model.width": [384, 512]}, "timeout_min": 30},
    ]})
    flat = {"model.width": 384, "model.patch": 2}
    assert resolve(flat, defaults, rules, stats=lambda: {"params": 5e7}) == Resources(gpus=1, timeout_min=30)
    assert resolve(flat, defaults, rules, stats=lambda: {"params": 2e8}).gpus == 4
    assert resolve({"model.width": 1152, "model.patch": 2}, defaults, rules).gpus == 8


def test_status_reader_reads_only_existing_folders(tmp_path):
    spec = spec_of(axes={"seed": list(range(5))})
    plan = make_plan(spec, tmp_path)
    done = plan.runs[2].dir
    done.mkdir(parents=True)
    (done / "status.json").write_text(json.dumps({"state": "completed", "step": 10}))
    status_of = status_reader(tmp_path, 60)
    assert [status_of(r).state for r in plan.runs] == ["pending", "pending", "completed", "pending", "pending"]


def test_golden_sbatch_multi_gpu(tmp_path):
    """The sbatch script of a 4-GPU run: one task per GPU, USR2 ahead of the limit, requeue.
    Regenerate with GATSCALE_REGEN_GOLDEN=1."""
    spec = load_grid("imagenet256_scaling.yaml")
    spec.executor.partition, spec.executor.account = "gpu", "scaling"
    spec.executor.setup = ["module load cuda/12.4"]
    res = Resources(gpus=4, nodes=1, cpus_per_task=8, mem_gb=240, timeout_min=1440)
    text = golden_sbatch(tmp_path, spec.executor, res, name="gatscale-imagenet256_scaling", array_size=3,
                         golden="imagenet256_4gpu.sbatch")
    for line in ("--ntasks-per-node=4", "--gpus-per-node=4", "--signal=USR2@180", "--array=0-2%3", "--requeue"):
        assert line in text


def test_executor_spec_defaults_keep_signal_well_before_limit():
    # the early-USR2 flake: keep timeout*60 - signal_delay well above 60 s for real jobs
    assert ExecutorSpec().signal_delay_s < 60 * Resources().timeout_min - 90


@pytest.mark.parametrize(("state", "queued", "rerun", "action"), [
    ("completed", False, True, "skip (completed)"),
    ("diverged", True, True, "skip (diverged)"),
    ("running", False, False, "skip (running)"),
    ("pending", True, False, "skip (queued)"),
    ("interrupted", True, False, "skip (queued)"),
    ("interrupted", False, False, "submit"),
    ("failed", False, False, "skip (failed; --rerun-failed reruns it)"),
    ("failed", True, True, "submit"),  # a still-alive worker that failed it will not retry it
])
def test_decide(state, queued, rerun, action):
    assert launch.decide(state, queued, rerun) == action


def test_colliding_short_ids_are_not_merged(monkeypatch, tmp_path):
    """Two different configs whose short ids collide stay two runs; true duplicates merge."""
    from sweeps import plan as plan_module
    from sweeps.spec import parse_grid

    monkeypatch.setattr(plan_module, "ID_LENGTH", 1)  # 16 possible ids: collisions are certain
    spec = parse_grid({"axes": {"seed": list(range(40)), "logging.progress": ["bar", "lines"]}})
    plan = plan_module.make_plan(spec, tmp_path)
    assert len(plan.runs) == 40 and plan.merged == 40  # progress is cosmetic: true duplicates
    assert len({r.run_id for r in plan.runs}) == 40
    assert {r.flat["seed"] for r in plan.runs} == set(range(40))


def _append_jobs(sweep_dir: str, writer: int, count: int) -> None:
    for i in range(count):
        manifest.update(Path(sweep_dir), lambda data, i=i: data["jobs"].append({"job_id": f"{writer}-{i}"}))


def test_two_concurrent_manifest_writers_lose_nothing(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_jobs, args=(str(tmp_path), w, 40)) for w in range(2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    jobs = [j["job_id"] for j in manifest.read(tmp_path)["jobs"]]
    assert sorted(jobs) == sorted(f"{w}-{i}" for w in range(2) for i in range(40))
    assert not list(tmp_path.glob("*.tmp"))


def test_isoflop_grid_solves_steps_to_the_budget(capsys):
    """Issue 22's acceptance: every cell of the bundled isoFLOP ladder within 1% of its budget,
    eval cadence following the steps, cells out of the step limits dropped with the reason, ids
    stable, and --dry-run --json one object per run."""
    from sweeps import costs

    spec = load_grid("isoflop_cpu.yaml")
    plan = make_plan(spec, Path("x"))
    assert len(spec.budgets.flops) >= 4 and max(spec.budgets.flops) / min(spec.budgets.flops) >= 10 ** 1.5
    for budget in spec.budgets.flops:
        sizes = {(r.flat["model.width"], r.flat["model.depth"]) for r in plan.runs if r.budget == budget}
        assert 4 <= len(sizes) <= 6 and len({d for _, d in sizes}) > 1
    for run in plan.runs:
        flops = costs.training_flops(run.flat, costs.model_stats(run.flat))
        assert abs(flops / run.budget - 1) <= 0.01
        assert spec.budgets.min_steps <= run.flat["train.steps"] <= spec.budgets.max_steps
        assert run.flat["eval.every"] == -(-run.flat["train.steps"] // spec.budgets.eval_count)
    assert plan.dropped and all("steps" in reason for _, _, reason in plan.dropped)
    assert [r.run_id for r in make_plan(load_grid("isoflop_cpu.yaml"), Path("y")).runs] == [r.run_id for r in plan.runs]
    assert launch.main(["isoflop_cpu.yaml", "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(plan.runs) and {"run_id", "budget", "train_flops", "steps", "model.width", "model.depth"} <= set(rows[0])
    assert launch.main(["isoflop_cpu.yaml", "--dry-run"]) == 0
    assert "dropped: budget" in capsys.readouterr().out


@pytest.mark.parametrize("budgets, message", [
    ({"flops": []}, "budgets.flops"), ({"flops": [1e12], "tolerance": 2}, "budgets.tolerance"),
    ({"flops": [1e12], "min_steps": 10, "max_steps": 5}, "budgets.min_steps"),
    ({"flops": [1e12], "colour": 1}, "budgets.colour"),
])
def test_bad_budgets_name_the_key(budgets, message):
    with pytest.raises(GridError, match=message):
        parse_grid({"axes": {"seed": [0]}, "budgets": budgets})


def test_budgets_refuse_fixed_steps():
    with pytest.raises(GridError, match="train.steps"):
        parse_grid({"set": {"train.steps": 10}, "axes": {"seed": [0]}, "budgets": {"flops": [1e12]}})


# --------------------------------------------------------------------------------------------
# A short id another grid's run already holds in the sweep folder


def _collision_setup(monkeypatch, tmp_path, record: str):
    """Grid A's one run, placed in `tmp_path/sweep` (its folder holds the trainer's config.yaml),
    recorded as `record` says (`digest`: as launches record now, `legacy`: an entry without the
    digest, `folder`: no manifest at all); and grid B, a different grid one of whose points has
    a different config and the same 1-hex-digit id. Returns (A, B, A's run, B's colliding point's seed)."""
    from contract import rundir
    from sweeps import plan as plan_module

    monkeypatch.setattr(plan_module, "ID_LENGTH", 1)  # 16 possible short ids
    sweep = tmp_path / "sweep"
    grid_a = parse_grid({"name": "a", "base": BASE, "axes": {"model.width": [64]}})
    [run_a] = make_plan(grid_a, sweep).runs
    run_a.dir.mkdir(parents=True)
    gat_config.save_config(gat_config.from_dict(run_a.config()), run_a.dir / rundir.CONFIG)
    if record != "folder":
        entry = run_a.manifest_entry()
        if record == "legacy":
            del entry[manifest.IDENTITY]
        manifest.update(sweep, lambda data: manifest.merge_runs(data, [entry]))
    grid_b = parse_grid({"name": "b", "base": {**BASE, "train": {"steps": 20, "base_lr": 1e-4}},
                         "axes": {"seed": list(range(40))}})
    seeds = [run.flat["seed"] for run in make_plan(grid_b, tmp_path / "empty").runs if run.run_id == run_a.run_id]
    assert seeds, "no seed of grid B collides with A's short id"
    return grid_a, grid_b, run_a, seeds[0]


@pytest.mark.parametrize("record", ["digest", "legacy", "folder"])
def test_a_short_id_held_by_another_grids_run_is_not_reused(monkeypatch, tmp_path, record):
    """Grid B's point whose short id is that of grid A's run in the same sweep folder (a different
    config) gets the long id and its own folder, never A's; relaunching A still finds its folder."""
    from sweeps import plan as plan_module

    grid_a, grid_b, run_a, seed = _collision_setup(monkeypatch, tmp_path, record)
    sweep = run_a.dir.parent.parent
    runs_b = make_plan(grid_b, sweep).runs
    [clash] = [run for run in runs_b if run.flat["seed"] == seed]
    assert clash.run_id != run_a.run_id and len(clash.run_id) == plan_module.COLLISION_ID_LENGTH
    assert clash.dir != run_a.dir and not clash.dir.exists()
    assert len({run.run_id for run in runs_b}) == len(runs_b)  # and B's own points stay apart
    [again] = make_plan(grid_a, sweep).runs
    assert (again.run_id, again.dir) == (run_a.run_id, run_a.dir)
    # B's launch records its run beside A's: two entries, A's untouched
    manifest.update(sweep, lambda data: manifest.merge_runs(data, [r.manifest_entry() for r in runs_b]))
    recorded = {r["run_id"]: r for r in manifest.read(sweep)["runs"]}
    assert recorded[clash.run_id]["dir"] == f"runs/{clash.name}"
    if record != "folder":
        assert recorded[run_a.run_id]["dir"] == f"runs/{run_a.name}" and recorded[run_a.run_id]["coords"] == run_a.coords


def test_the_launcher_gives_the_colliding_point_the_long_id(monkeypatch, tmp_path, capsys):
    """sweeps.launch (the dry run's walk and the launch's plan) names through the same namer."""
    import yaml

    from sweeps import plan as plan_module

    grid_a, grid_b, run_a, seed = _collision_setup(monkeypatch, tmp_path, "digest")
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "base": {**BASE, "train": {"steps": 20, "base_lr": 1e-4}},
                                    "axes": {"seed": list(range(40))}}))
    assert launch.main([str(path), "--out", str(run_a.dir.parent.parent), "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    [clash] = [row for row in rows if row["seed"] == seed]
    assert len(clash["run_id"]) == plan_module.COLLISION_ID_LENGTH and clash["name"] != run_a.name


def test_manifest_entries_record_the_identity_digest_and_old_entries_gain_it(tmp_path):
    from sweeps.plan import identity_digest

    spec = spec_of(axes={"model.width": [32, 64]})
    runs = make_plan(spec, tmp_path).runs
    entries = [r.manifest_entry() for r in runs]
    assert [e[manifest.IDENTITY] for e in entries] == [identity_digest(r.flat).hex() for r in runs]
    assert all(e[manifest.IDENTITY].startswith(e["run_id"]) for e in entries)
    legacy = [{k: v for k, v in e.items() if k != manifest.IDENTITY} for e in entries]
    manifest.update(tmp_path, lambda data: manifest.merge_runs(data, legacy))
    manifest.update(tmp_path, lambda data: manifest.merge_runs(data, entries))
    assert manifest.read(tmp_path)["runs"] == entries
    # and a relaunch keeps every id and folder
    assert [(r.run_id, r.dir) for r in make_plan(spec, tmp_path).runs] == [(r.run_id, r.dir) for r in runs]


def test_a_relaunch_over_entries_without_digests_reads_no_run_config(monkeypatch, tmp_path):
    """A manifest written before digests were recorded: the runs whose recorded overrides are the
    point's keep their ids and folders without a config.yaml read (a 10^5-run relaunch reads none)."""
    from contract import rundir

    spec = spec_of(axes={"model.width": [32, 64], "seed": [0, 1]})
    runs = make_plan(spec, tmp_path).runs
    for run in runs:
        run.dir.mkdir(parents=True)
        gat_config.save_config(gat_config.from_dict(run.config()), run.dir / rundir.CONFIG)
    legacy = [{k: v for k, v in r.manifest_entry().items() if k != manifest.IDENTITY} for r in runs]
    manifest.update(tmp_path, lambda data: manifest.merge_runs(data, legacy))

    def no_reads(run_dir):
        raise AssertionError(f"read {run_dir}")

    monkeypatch.setattr(gat_config, "load_run_config", no_reads)
    assert [(r.run_id, r.dir) for r in make_plan(spec, tmp_path).runs] == [(r.run_id, r.dir) for r in runs]
