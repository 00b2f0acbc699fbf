"""Data parallelism: two gloo ranks on CPU train like one process on the same global batch."""
from __future__ import annotations

import faulthandler
import os
import shutil
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import gat.train
from contract import rundir
from gat import distributed
from conftest import FakeDecoder, SyntheticLatents, tiny_config

# Every random draw inside a step (augmentation, MNG noise, the approximate penalty's ε) is
# per rank by design, so the comparison uses the deterministic variants of each; z, labels and
# the data order are shared (sliced from the global batch) and are exercised as they are.
DETERMINISTIC = {"augment.enabled": False, "mng.mode": "msg", "loss.penalty": "exact",
                 "train.steps": 3, "train.batch": 8, "eval.every": 3, "train.ckpt_every": 3}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _patch_data() -> None:
    gat.train.load_dataset = lambda cfg: SyntheticLatents(noise=0.0)
    gat.train.load_decoder = lambda cfg: FakeDecoder()


def _rank_main(rank: int, world: int, port: int, run_dir: str, done_dir: str) -> None:
    faulthandler.enable(all_threads=True)  # a crash inside torch prints where each thread was
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    _patch_data()
    assert gat.train.run(tiny_config(**DETERMINISTIC), run_dir) == "completed"
    # run() has trained, written, passed the closing barrier and left the process group.
    (Path(done_dir) / f"rank{rank}").touch()


def _spawn_ranks(world: int, run_dir: Path, done_dir: Path) -> None:
    """Run `world` ranks. A rank killed by a signal after its run() returned (in interpreter
    exit, where CI twice saw gloo abort a rank: "terminate called without an active exception")
    is reported as a warning: it had passed the closing barrier, so every rank had written all
    this test compares."""
    done_dir.mkdir()
    try:
        mp.spawn(_rank_main, args=(world, _free_port(), str(run_dir), str(done_dir)), nprocs=world, join=True)
    except mp.ProcessExitedException as err:
        if err.signal_name is None or not (done_dir / f"rank{err.error_index}").exists():
            raise
        warnings.warn(f"rank {err.error_index} died of {err.signal_name} after its run completed and left "
                      "the process group (torch/gloo teardown at interpreter exit)")


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    _spawn_ranks(2, tmp_path / "ddp", tmp_path / "done")

    monkeypatch.setattr(gat.train, "load_dataset", lambda cfg: SyntheticLatents(noise=0.0))
    monkeypatch.setattr(gat.train, "load_decoder", lambda cfg: FakeDecoder())
    assert gat.train.run(tiny_config(**DETERMINISTIC), tmp_path / "single") == "completed"

    ddp = torch.load(tmp_path / "ddp" / "checkpoints" / "latest.pt", weights_only=False)
    single = torch.load(tmp_path / "single" / "checkpoints" / "latest.pt", weights_only=False)
    # Summation order differs (two half-batch means vs one), and Adam with beta1 = 0 turns a
    # round-off difference in a near-zero gradient into a sizeable part of one step for that
    # element, so closeness is judged per tensor (without the gradient all-reduce the error is
    # ~100x the bound).
    for net in ("G", "D", "G_ema"):
        for name, tensor in single[net].items():
            if tensor.is_floating_point():
                error = (ddp[net][name] - tensor).norm() / tensor.norm().clamp_min(1e-12)
                assert error < 2e-3, f"{net}.{name} differs by {error:.2e} (relative norm)"
    # Only rank 0 writes: one line per tick, with the rank-averaged losses.
    ddp_stats, single_stats = rundir.read_stats(tmp_path / "ddp"), rundir.read_stats(tmp_path / "single")
    assert [r["step"] for r in ddp_stats] == [r["step"] for r in single_stats] == [2, 3]
    for a, b in zip(ddp_stats, single_stats):
        assert a["loss_d"] == pytest.approx(b["loss_d"], rel=1e-4)
        assert a["grad_norm_g"] == pytest.approx(b["grad_norm_g"], rel=1e-4)


NODELISTS = {
    "gpu[01-03,07],login1": ["gpu01", "gpu02", "gpu03", "gpu07", "login1"],
    "node5": ["node5"],
    "a,b": ["a", "b"],
    "node[1-2]-ib": ["node1-ib", "node2-ib"],  # a suffix after the brackets
    "rack[1-2]-n[01-02]": ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"],  # two bracket groups
}


@pytest.mark.parametrize("parser", ["scontrol", "submitit"])
def test_expand_nodelist(parser, monkeypatch):
    if parser == "submitit":
        monkeypatch.setattr(distributed.shutil, "which", lambda name: None)
    elif shutil.which("scontrol") is None:
        if os.environ.get("GATSCALE_REQUIRE_SLURM") == "1":
            pytest.fail("scontrol is not installed, and GATSCALE_REQUIRE_SLURM=1 requires it")
        pytest.skip("scontrol is not installed (SLURM tests skip without a cluster)")
    for nodelist, hosts in NODELISTS.items():
        assert distributed.expand_nodelist(nodelist) == hosts, nodelist


def test_detect_reads_torchrun_then_slurm():
    assert distributed.detect({}) == distributed.DistEnv()
    assert distributed.detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == distributed.DistEnv(3, 4, 1)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert distributed.detect(slurm) == distributed.DistEnv(5, 8, 1)
    assert distributed.detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).world_size == 1
