"""Values that used to pass validation and then fail mid-run, or run silently wrong (issue 20,
defect 6): each is one `error:` line naming the key, exit 2, before any folder is written."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gat import fid, sample, train
from sweeps import launch

TRAINER_CASES = {  # --set value: text the error must contain
    "train.base_lr=.inf": "train.base_lr: must be a finite number, got inf",
    "loss.gamma=.nan": "loss.gamma: must be a finite number, got nan",
    "train.eps=-1": "train.eps must be > 0",
    "eval.probe_batch=-3": "eval.probe_batch must be > 0",
    "eval.probe_batch=0": "eval.probe_batch must be > 0",
    f"seed={10**23}": "seed must be in [0, 4294967295]",
    "eval.num_samples=1": "eval.num_samples must be 0 (no evaluation) or >= 2",
    "train.grad_clip=.nan": "train.grad_clip: must be a finite number",
    "eval.sample_psi=.nan": "eval.sample_psi: must be a finite number",
    "model.d_width=0": "model.d_width must be > 0 when set",
    "data.num_workers=-1": "data.num_workers must be >= 0",
    "mng.levels=9": "mng.levels=9 exceeds model.depth=4",
}


def _one_error_line(capsys: pytest.CaptureFixture[str], message: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


@pytest.mark.parametrize("dry_run", [False, True], ids=["train", "dry_run"])
@pytest.mark.parametrize("setting", list(TRAINER_CASES))
def test_trainer_refuses_bad_values_before_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      setting: str, dry_run: bool) -> None:
    out = tmp_path / "run"
    argv = ["fmnist_smoke.yaml", "--out", str(out), "--set", setting] + (["--dry-run"] if dry_run else [])
    assert train.main(argv) == 2
    _one_error_line(capsys, TRAINER_CASES[setting])
    assert not out.exists()


def test_duplicate_yaml_keys_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """PyYAML keeps the last of two `train:` sections: that once started a 50,000-step run."""
    config = tmp_path / "twice.yaml"
    config.write_text("train:\n  steps: 5\ntrain:\n  steps: 50000\n")
    assert train.main([str(config), "--out", str(tmp_path / "run")]) == 2
    _one_error_line(capsys, "duplicate key 'train'")
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: fmnist_smoke.yaml\nexecutor:\n  kind: debug\nexecutor:\n  kind: local\naxes:\n  seed: [0]\n")
    assert launch.main([str(grid), "--out", str(tmp_path / "sweep")]) == 2
    _one_error_line(capsys, "duplicate key 'executor'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml", "twice.yaml"]


def test_a_non_finite_value_in_a_grid_is_refused_before_the_manifest(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: fmnist_smoke.yaml\naxes:\n  train.base_lr: [1.0e-4, .inf]\n")
    out = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(out), "--dry-run"]) == 2
    _one_error_line(capsys, "train.base_lr")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("dry_run", [False, True], ids=["train", "dry_run"])
def test_cuda_without_a_gpu_is_an_error_before_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          dry_run: bool) -> None:
    out = tmp_path / "run"
    assert train.main(["fmnist_smoke.yaml", "--out", str(out), "--device", "cuda"] + (["--dry-run"] if dry_run else [])) == 2
    _one_error_line(capsys, "no CUDA GPU")
    assert not out.exists()


def test_sample_refuses_a_nan_psi(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ψ = NaN wrote all-zero images with exit 0."""
    with pytest.raises(SystemExit) as exit_info:
        sample.main([str(tmp_path), "--num", "4", "--out", str(tmp_path / "s.npz"), "--psi", "nan"])
    assert exit_info.value.code == 2
    assert "--psi must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


def _archives(folder: Path) -> dict[str, Path]:
    images = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    good = folder / "good.npz"
    np.savez(good, arr_0=images)
    raw = good.read_bytes()
    truncated, damaged, nan_stats = folder / "truncated.npz", folder / "crc.npz", folder / "nan.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    for offset in (200, 300):  # inside arr_0's data: the zip directory still reads, the CRC does not
        flipped[offset] ^= 0xFF
    damaged.write_bytes(bytes(flipped))
    np.savez(nan_stats, mu=np.full(4, np.nan), sigma=np.eye(4))
    return {"good": good, "truncated": truncated, "crc": damaged, "nan": nan_stats}


@pytest.mark.parametrize("case,message", [("truncated", "not a readable .npz"), ("crc", "damaged .npz archive"),
                                          ("nan", "mu/sigma hold non-finite values")])
def test_fid_names_a_damaged_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str) -> None:
    paths = _archives(tmp_path)
    assert fid.main([str(paths[case]), str(paths["good"]), "--device", "cpu"]) == 2
    _one_error_line(capsys, f"{paths[case]}: {message}")


@pytest.mark.slow  # Inception on CPU, twice
def test_fid_warns_when_resolutions_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """32x32 against 64x64 printed an FID with no word that it measures the resize too."""
    rng = np.random.default_rng(0)
    small, large = tmp_path / "small.npz", tmp_path / "large.npz"
    np.savez(small, arr_0=rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    np.savez(large, arr_0=rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8))
    assert fid.main([str(small), str(large), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "warning: the inputs differ in resolution" in captured.err and "32x32" in captured.err
    assert "64x64" in captured.err and captured.out.startswith("FID ")
    assert fid.main([str(small), str(small), "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err


COMMITTED_TABLE = Path(__file__).resolve().parents[1] / "results" / "scaling_cpu" / "analysis" / "results.csv"


@pytest.mark.parametrize("case,message", [("subnormal", "fd_fmnist=1e-320"), ("one_run", "2 or more distinct gflops")])
def test_plot_scaling_refuses_unfittable_tables_before_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  case: str, message: str) -> None:
    """A final FD of 1e-320 raised OverflowError, and one run left an empty analysis folder."""
    import pandas as pd

    from analysis import plot_scaling

    table = pd.read_csv(COMMITTED_TABLE)
    if case == "subnormal":
        table.loc[table.groupby("run_id")["step"].idxmax().iloc[0], "fd_fmnist"] = 1e-320
    else:
        table = table[table["run_id"] == table["run_id"].iloc[0]]
    csv, out = tmp_path / "table.csv", tmp_path / "out"
    table.to_csv(csv, index=False)
    assert plot_scaling.main(["--table", str(csv), "--out", str(out)]) == 2
    _one_error_line(capsys, message)
    assert not out.exists()
