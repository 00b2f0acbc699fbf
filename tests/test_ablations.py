"""analysis.early_layers, analysis.instability and the analysis.ablations CLI on synthetic run
folders (stats.jsonl lines per docs/run_folder.md), and gat.probe on a real (untrained) generator
saved as a checkpoint."""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from analysis import ablations, early_layers, instability  # noqa: E402
from analysis.load import AnalysisError, load_results  # noqa: E402
from analysis.traces import stats_traces  # noqa: E402
from gat import checkpoint, probe  # noqa: E402
from contract.config import from_dict, save_config  # noqa: E402
from gat.models import registry  # noqa: E402
from run_folders import write_sweep  # noqa: E402

BLOCKS = 4


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    """Figures a test draws but never saves stay open in pyplot; close them after each test."""
    yield
    plt.close("all")


def ablation_profile(mode: str) -> list[float]:
    """Early blocks idle without MNG, busy with it (the paper's claim, made up for the test)."""
    return [0.001, 0.002, 0.2, 0.4] if mode == "off" else [0.1, 0.15, 0.2, 0.3]


def output_change(rule: str, width: int) -> float:
    """A fixed LR speeds outputs up with width; the width-aware rule keeps them flat."""
    return 0.01 * (width / 64 if rule == "constant" else 1.0)


def write_stats(run_dir: Path, *, mode: str, rule: str, width: int, steps: int, diverged_at: int | None) -> None:
    """Replace a run's stats.jsonl with log lines every 10 steps and eval lines every 20."""
    lines = []
    for step in range(10, steps + 1, 10):
        line = {"step": step, "images_seen": step * 16, "wall_s": step * 0.1, "loss_d": 0.6, "loss_g": 0.8,
                "r1": 0.01, "r2": 0.01, "repa": None, "grad_norm_g": 0.1 * width / 64 * step / 10,
                "grad_norm_d": 0.2, "lr_g": 1e-3, "lr_d": 1e-3}
        if step % 20 == 0:
            line["metrics"] = {"fd_fmnist": 100.0 / step}
            line["diagnostics"] = {
                "g_output_change": output_change(rule, width), "d_logit_change": 2 * output_change(rule, width),
                "g_block_update_ratio": [0.5, 0.4, 0.3, 0.2], "g_block_ablation": ablation_profile(mode),
                "g_act_std": 1.0, "d_act_std": 1.0,
            }
        lines.append(json.dumps(line))
    if diverged_at is not None:
        lines.append(json.dumps({"step": diverged_at, "loss_d": None, "grad_norm_g": None}))
    lines.append('{"step": 999, "torn')  # a crash mid-write leaves half a line
    (run_dir / "stats.jsonl").write_text("\n".join(lines))


def set_mng(run_dir: Path, mode: str) -> None:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["mng"]["mode"] = mode
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Widths 64/128/256 × rules constant/width_aware, MNG exp vs off; wide constant runs diverge."""
    specs = []
    for rule in ("constant", "width_aware"):
        for width in (64, 128, 256):
            for mode in ("exp", "off"):
                diverges = rule == "constant" and width == 256
                specs.append({
                    "name": f"{rule}-w{width}-{mode}",
                    "run": {"width": width, "heads": 4, "lr_rule": rule, "base_lr": 1e-3, "batch": 16,
                            "state": "diverged" if diverges else "completed", "last_step": 45 if diverges else 60},
                    "meta": (mode, rule, width, 60, 45 if diverges else None),
                })
    sweep_dir = write_sweep(tmp_path / "ablation", [{k: v for k, v in s.items() if k != "meta"} for s in specs])
    for spec in specs:
        mode, rule, width, steps, diverged_at = spec["meta"]
        run_dir = sweep_dir / "runs" / spec["name"]
        set_mng(run_dir, mode)
        write_stats(run_dir, mode=mode, rule=rule, width=width, steps=diverged_at or steps, diverged_at=diverged_at)
    return sweep_dir


def test_stats_traces_reads_every_line(sweep: Path) -> None:
    table = load_results([sweep])
    traces = stats_traces(table)
    one = traces[traces["run_id"] == "id-constant-w64-exp"]
    assert one["step"].tolist() == [10, 20, 30, 40, 50, 60]  # log lines too; the torn line is skipped
    assert one["g_output_change"].notna().tolist() == [False, True, False, True, False, True]
    assert one["mng.mode"].unique().tolist() == ["exp"]
    diverged = traces[traces["run_id"] == "id-constant-w256-exp"]
    assert diverged["step"].max() == 45 and np.isnan(diverged["grad_norm_g"].iloc[-1])


def test_block_profiles_and_plot(sweep: Path) -> None:
    profiles = early_layers.block_profiles(load_results([sweep]))
    assert len(profiles) == 12 * BLOCKS
    off = profiles[(profiles["mng.mode"] == "off") & (profiles["run_id"] == "id-width_aware-w64-off")]
    assert off["ablation"].tolist() == ablation_profile("off")
    assert off["depth_frac"].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert off["step"].iloc[0] == 60
    fig = early_layers.plot_block_profiles(profiles)
    assert len(fig.axes) == 2
    assert {line.get_label() for line in fig.axes[0].lines} == {"MNG exp", "MNG off"}


def test_early_share_bootstrap() -> None:
    rng = np.random.default_rng(0)
    idle_early = np.abs(rng.normal([[0.0], [0.0], [1.0], [1.0]], 0.05, size=(4, 200)))
    busy = np.abs(rng.normal(1.0, 0.05, size=(4, 200)))
    low = early_layers.early_share(idle_early, n_boot=300)
    even = early_layers.early_share(busy, n_boot=300)
    assert low["share"] < 0.1 and low["low"] <= low["share"] <= low["high"]
    assert even["low"] < 0.5 < even["high"] and abs(even["share"] - 0.5) < 0.05
    # an odd depth splits the middle block: equal effects still give one half
    assert early_layers.early_share(np.ones((5, 3)), n_boot=10)["share"] == pytest.approx(0.5)
    with pytest.raises(AnalysisError):
        early_layers.early_share(np.ones(4))


def test_output_change_by_width(sweep: Path) -> None:
    summary = instability.output_change_by_width(stats_traces(load_results([sweep])))
    constant = summary[summary["train.lr_rule"] == "constant"].set_index("model.width")
    aware = summary[summary["train.lr_rule"] == "width_aware"].set_index("model.width")
    assert constant["g_output_change"].tolist() == pytest.approx([0.01, 0.02, 0.04])
    assert aware["d_logit_change"].tolist() == pytest.approx([0.02, 0.02, 0.02])
    assert constant["n_runs"].tolist() == [2, 2, 2]
    fig = instability.plot_output_change(summary)
    assert [len(ax.lines) for ax in fig.axes[:2]] == [2, 2]


def test_divergence_summary_and_plots(sweep: Path) -> None:
    collapsed = sweep / "runs" / "width_aware-w64-exp" / "status.json"  # finite losses, FD blown up
    collapsed.write_text(json.dumps({**json.loads(collapsed.read_text()), "state": "collapsed", "step": 40}))
    table = load_results([sweep])
    assert set(table.loc[table["status"] == "collapsed", "diverged_step"]) == {40}  # the tidy table
    summary = instability.divergence_summary(table)
    wide = summary[(summary["train.lr_rule"] == "constant") & (summary["model.width"] == 256)].iloc[0]
    assert wide["frac_diverged"] == 1.0 and wide["median_diverged_step"] == 45 and wide["n_runs"] == 2
    assert summary[summary["train.lr_rule"] == "width_aware"]["frac_diverged"].eq(0).all()
    narrow = summary[(summary["train.lr_rule"] == "width_aware") & (summary["model.width"] == 64)].iloc[0]
    assert (narrow["n_collapsed"], narrow["n_finished"], narrow["frac_unstable"]) == (1, 2, 0.5)
    assert len(instability.plot_divergence(summary).axes) == 2
    traces = stats_traces(table)
    fig = instability.plot_grad_norms(traces)
    assert len(fig.axes) == 4 and len(fig.axes[0].lines) == 6  # one line per constant-rule run


def coord_rows() -> pd.DataFrame:
    """A coordinate check where `constant` activations grow as width and `mup` stays flat."""
    rows = []
    for rule in ("constant", "mup"):
        for width in (32, 64, 128):
            for step in (0, 1, 2):
                for net, module in (("G", "blocks.0.attn"), ("G", "blocks.1.attn"), ("D", "head")):
                    growth = (width / 32) if rule == "constant" and step > 0 else 1.0
                    rows.append({"net": net, "module": module, "width": width, "rule": rule, "seed": 0,
                                 "step": step, "rms": 0.5 * growth})
    return pd.DataFrame(rows)


def test_coord_check_tables_and_plot(tmp_path: Path) -> None:
    coord_rows().to_csv(tmp_path / "coord_check.csv", index=False)
    coords = instability.load_coord_check(tmp_path)
    assert set(coords["kind"]) == {"blocks.attn", "head"}
    table = instability.coord_table(coords)
    assert list(table.columns) == [32, 64, 128]
    assert table.loc[("G", "constant", "blocks.0.attn")].tolist() == pytest.approx([0.5, 1.0, 2.0])
    slopes = instability.coord_slopes(coords).set_index(["net", "rule", "module"])["slope"]
    assert slopes[("G", "constant", "blocks.1.attn")] == pytest.approx(1.0)
    assert slopes[("D", "mup", "head")] == pytest.approx(0.0, abs=1e-9)
    assert instability.coord_slopes(coords, step=0)["slope"].abs().max() < 1e-9
    fig = instability.plot_coord_check(coords)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 4  # G and D x 2 rules
    with pytest.raises(AnalysisError):
        instability.load_coord_check(tmp_path / "missing.csv")


def test_rule_predictions_and_overlay() -> None:
    optima = pd.DataFrame({"model.width": [64, 128, 256], "train.lr_rule": "constant",
                           "effective_lr": [4e-3, 2e-3, 1e-3]})
    predictions = instability.rule_predictions(optima)
    at = predictions.set_index(["rule", "model.width"])["predicted_lr"]
    assert at[("constant", 256)] == pytest.approx(4e-3)
    assert at[("width_aware", 256)] == pytest.approx(1e-3)
    assert at[("sqrt", 256)] == pytest.approx(2e-3)
    fig = instability.plot_lr_optima_overlay(optima, predictions)
    assert len(fig.axes[0].lines) == 4
    with pytest.raises(AnalysisError):
        instability.rule_predictions(optima.drop(columns="effective_lr"))


def fake_run(run_dir: Path, mode: str, seed: int) -> Path:
    """A run folder holding an untrained tiny generator as its newest checkpoint."""
    config = from_dict({"seed": seed, "model": {"width": 32, "depth": BLOCKS, "heads": 2, "patch": 2, "z_dim": 16},
                        "mng": {"mode": mode}, "data": {"kind": "latents", "path": None}})
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / "config.yaml")
    dims = {"latent_channels": 4, "latent_size": 8, "num_classes": 10}
    torch.manual_seed(seed)
    G = registry.build_generator(config, **dims)
    state = {"step": 10, "G": G.state_dict(), "D": {}, "G_ema": G.state_dict(), "opt_g": {}, "opt_d": {},
             "rng": {}, "dims": dims}
    checkpoint.save(run_dir / "checkpoints", state)
    (run_dir / "status.json").write_text(json.dumps({"state": "completed", "step": 10, "reason": None}))
    return run_dir


def test_probe_run_and_probe_tables(tmp_path: Path) -> None:
    for mode in ("exp", "off"):
        fake_run(tmp_path / "runs" / mode, mode, seed=0 if mode == "exp" else 1)
    table = load_results([tmp_path / "runs"])
    with pytest.warns(UserWarning, match="no decoder"):  # data.path unset: no decoder, latents only
        effects = early_layers.probe_runs(table, num=6, pca_samples=2)
    assert set(effects) == {"exp", "off"}
    effect = effects["exp"]
    assert effect.ablation_latent.shape == (BLOCKS, 6) and effect.ablation_pixel is None
    assert effect.update_ratio.shape == (BLOCKS, 6)
    assert effect.pca_maps.shape == (BLOCKS + 1, 2, 4, 4, 3)
    assert 0.0 <= effect.pca_maps.min() and effect.pca_maps.max() <= 1.0
    frame = early_layers.probe_frame(table, effects)
    assert set(frame["measure"]) == {"ablation_latent", "update_ratio"} and len(frame) == 2 * 2 * BLOCKS
    shares = early_layers.early_share_table(table, effects, n_boot=50)
    assert list(shares["space"]) == ["latent", "latent"] and shares["share"].between(0, 1).all()
    assert len(early_layers.plot_block_profiles(frame, value="value").axes) == 2
    maps = early_layers.widest_pca_maps(table, effects)
    assert list(maps) == ["MNG exp", "MNG off"] and maps["MNG off"] is effects["off"].pca_maps
    assert early_layers.plot_pca_maps(maps).axes[0].get_title() == "input"
    assert len(early_layers.plot_early_share(shares).axes) == 1


def test_early_layer_report_from_checkpoints(tmp_path: Path) -> None:
    for mode in ("exp", "off"):
        fake_run(tmp_path / "runs" / mode, mode, seed=0)
    with pytest.warns(UserWarning, match="no decoder"):
        report = early_layers.early_layer_report(tmp_path / "runs", probe_samples=6, bootstrap=20)
    assert report.source == "run folders"
    assert set(report.tables) == {"probe_blocks", "early_share"}
    assert set(report.figures) == {"block_ablation_probe", "early_share", "pca_maps"}
    # These runs never logged an eval tick, so there is no per-block diagnostic from training.
    assert report.missing["block_profiles_training"] == "no eval tick logged g_block_ablation"
    assert not any("run_dir" in table for table in report.tables.values())  # a machine's path, never committed


def test_probe_pixel_space_and_pca() -> None:
    config = from_dict({"model": {"width": 32, "depth": BLOCKS, "heads": 2, "patch": 2, "z_dim": 16}})
    G = registry.build_generator(config, latent_channels=4, latent_size=8, num_classes=10).eval()
    probes = probe.probe_set(5, G.z_dim, 10, seed=3)
    assert probes.y.tolist() == [0, 1, 2, 3, 4]
    effect = probe.block_effects(G, probes, decoder=lambda x: torch.sigmoid(x[:, :3]), batch=2)
    assert effect.ablation_pixel.shape == (BLOCKS, 5) and (effect.ablation_pixel >= 0).all()
    # Skipping a block that is an identity map changes nothing.
    zero_gates = torch.nn.init.zeros_
    block = G.blocks[0]
    zero_gates(block.modulation[1].weight)
    zero_gates(block.modulation[1].bias)
    assert probe.block_effects(G, probes).ablation_latent[0].max() == pytest.approx(0.0, abs=1e-6)
    # Component signs follow the largest loading, so reordering feature channels (which only
    # permutes the loadings) leaves the maps unchanged.
    tokens = torch.randn(2, 16, 8)
    assert np.allclose(probe.pca_rgb(tokens, 4), probe.pca_rgb(tokens[..., torch.randperm(8)], 4), atol=1e-5)


def test_instability_report_from_runs_then_from_the_committed_tables(sweep: Path) -> None:
    report = instability.instability_report(sweep)
    assert report.source == "run folders"
    assert set(report.tables) == {"output_change", "divergence", "grad_norm_traces"}
    assert set(report.figures) == {"output_change", "divergence_rate", "divergence_step", "grad_norms"}
    assert "python -m gat.coord_check" in report.missing["coord_check"]
    assert not any("run_dir" in table for table in report.tables.values())
    report.save(sweep / "analysis")
    shutil.rmtree(sweep / "runs")  # a fresh clone: the manifest and the committed tables only
    again = instability.instability_report(sweep)
    assert again.source == "committed tables"
    assert set(again.figures) == set(report.figures)
    for name, table in report.tables.items():
        pd.testing.assert_frame_equal(again.tables[name], table.reset_index(drop=True), check_dtype=False)


def test_early_layer_report_says_what_it_cannot_make(sweep: Path) -> None:
    report = early_layers.early_layer_report(sweep)
    assert set(report.figures) == {"block_profiles_training"}
    assert "has a checkpoint to probe" in report.missing["early_share"]
    shutil.rmtree(sweep / "runs")
    bare = early_layers.early_layer_report(sweep)
    assert not bare.figures and "committed early_share.csv" in bare.missing["early_share"]
    assert "no run folders" in bare.missing["pca_maps"]


def test_cli(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures"
    assert ablations.main([str(sweep), "--report", "instability", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "output_change.csv", "divergence.csv", "grad_norm_traces.csv",
        "output_change.png", "divergence_rate.png", "divergence_step.png", "grad_norms.png"}
    assert "not made: coord_check: no " in capsys.readouterr().out
    assert not (sweep / "analysis").exists()  # --out is where it writes
    # This grid varies no axis a report is chosen by; without run folders nothing can be drawn.
    for argv, message in (([str(sweep)], "name a report with --report"),
                          ([str(tmp_path / "nowhere"), "--report", "instability"], "no such folder")):
        assert ablations.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    shutil.rmtree(sweep / "runs")
    assert ablations.main([str(sweep), "--report", "early_layer_use"]) == 2
    assert "no figure could be made" in capsys.readouterr().err


def test_reports_follow_the_varied_axes(tmp_path: Path) -> None:
    runs = [{"name": f"r{i}", "coords": {"mng.mode": mode, "train.lr_rule": "constant", "model.width": width}}
            for i, (mode, width) in enumerate([("exp", 16), ("off", 16), ("exp", 32)])]
    (tmp_path / "manifest.json").write_text(json.dumps({"runs": runs}))
    assert ablations.default_reports(tmp_path) == ["early_layer_use"]
