"""Train one GAT run into a run folder (docs/run_folder.md).

    python -m gat.train CONFIG.yaml --out RUN_DIR [--set key=value ...] [--dry-run]

The loop around the GAN step of `gat.step` (one D step then one G step per iteration, paper
§2.6): resume, evaluation, reporting, checkpoints, and how a run ends. A run folder resumes
exactly: model, EMA, optimisers and RNG states are checkpointed, and every random draw of a step
is seeded from (seed, step, rank), so N steps + resume + N steps equals 2N steps bitwise on CPU.
A non-finite loss or gradient ends the run as `diverged`, a sustained FD blow-up (CollapseWatch)
as `collapsed` (both data points, exit 0); an exception ends it as `failed` (exit 1).

Read top to bottom: `run` checks and locks the folder and loads the newest verified checkpoint,
`Loop.run` builds the nets and the folder's headers, `Loop.train` iterates and ends the run;
what they use (meter, reporter, collapse rule, evaluator, progress, signals, folder checks)
follows, then the command line.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

from contract import cli


def parser() -> cli.Parser:
    """The command line of `python -m gat.train`, built before the heavy imports below."""
    parser = cli.Parser("gat.train", __doc__)
    parser.add_argument("config", help="trainer config YAML: a path, or a bundled name (fmnist.yaml, imagenet256.yaml)")
    parser.add_argument("--out", required=True, help="the run folder to write (created, or resumed if it holds a run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.steps=100 (repeatable)")
    parser.add_argument("--device", help="auto | cpu | cuda[:N]; shorthand for --set device=...")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and model summary, write nothing")
    parser.add_argument("--restart", action="store_true",
                        help="when no checkpoint of --out verifies, train again from step 0 (old stats.jsonl kept aside) instead of refusing")
    return parser


if __name__ == "__main__":  # --help, --version and usage errors answer before torch loads (seconds)
    parser().parse_args()


import torch  # noqa: E402
import yaml  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from contract import rundir  # noqa: E402
from contract.config import COSMETIC_KEYS, RunConfig, load_config, parse_set, save_config, to_dict  # noqa: E402
from contract.errors import ConfigError, UserError  # noqa: E402
from contract.metric_names import metric_name  # noqa: E402
from contract.model_shape import describe  # noqa: E402
from gat import checkpoint, diagnostics, distributed  # noqa: E402
from gat import eval as gat_eval  # noqa: E402
from gat.data import load_dataset, load_decoder  # noqa: E402
from gat.data.dataset import LatentDataset  # noqa: E402
from gat.encoders import load_encoder  # noqa: E402
from gat.sample import generate, image_grid  # noqa: E402
from gat.step import (  # noqa: E402
    LOGGED_TERMS, Iterations, Nets, build_nets, data_dims, device_name, peak_memory_mb, resolve_device,
)
from gat.wandb_log import WandbLog  # noqa: E402

GRID_SIZE = 64  # images per sample grid (8×8)


class ConfigMismatchError(UserError, RuntimeError):
    """RUN_DIR already holds a run with another configuration."""


# ---------------------------------------------------------------------------------------------
# The run


def run(config: RunConfig, run_dir: str | Path, restart: bool = False) -> str:
    """Train (or resume) the run in `run_dir`; return its final state, `completed` or `diverged`.

    A finished run (`completed`/`diverged`) is left alone. An exception is recorded as `failed`
    in status.json and re-raised. Checkpoint files of which none verifies are refused
    (NoVerifiedCheckpoint) unless `restart`, which starts over and sets the old stats aside.
    A preemption signal checkpoints the step reached, then ends the process by that signal.
    Under torchrun or a multi-task SLURM step every rank calls this; only rank 0 writes.
    """
    run_dir = Path(run_dir)
    where = distributed.init(resolve_device(config).type)
    try:
        state = _run(config, run_dir, where, restart)
        # Every rank has closed its logs before any tears the group down: a rank leaving while
        # another still talks to the store can abort the other (seen once in CI under gloo).
        distributed.barrier()
        return state
    finally:
        distributed.shutdown()


def _run(config: RunConfig, run_dir: Path, where: distributed.DistEnv, restart: bool) -> str:
    """`run` on one rank of an initialised process group."""
    status = check_run_dir(config, run_dir, where.is_main)
    if status is not None and status["state"] in rundir.FINAL_STATES:
        if where.is_main:
            print(f"{run_dir}: already {status['state']} at step {status['step']}; nothing to do")
        return status["state"]
    with writer_lock(run_dir, where.is_main):
        return Loop(config, run_dir, where).run(status, restart)


@contextlib.contextmanager
def writer_lock(run_dir: Path, main: bool) -> Iterator[None]:
    """On rank 0, create the folder and hold its writer lock for the block; elsewhere nothing."""
    if not main:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = rundir.lock_writer(run_dir)
    try:
        yield
    finally:
        lock.release()


def resume_state(run_dir: Path, status: dict[str, Any] | None, restart: bool) -> dict[str, Any] | None:
    """The newest verified checkpoint of `run_dir`, or None to train from step 0.

    Checkpoint files of which none verifies, or none where status.json records one, raise a
    UserError unless `restart` (then: a warning and None).
    """
    try:
        state = checkpoint.load_latest(run_dir / "checkpoints")
        recorded = int((status or {}).get("checkpoint_step") or 0)
        if state is None and recorded > 0:
            raise checkpoint.NoVerifiedCheckpoint([], f"status.json records a checkpoint at step {recorded}, "
                                                      f"but {run_dir / 'checkpoints'} holds none")
        return state
    except checkpoint.NoVerifiedCheckpoint as err:
        if not restart:
            raise UserError(f"{err}; rerun with --restart to train {run_dir} again from step 0") from None
        cli.say(f"warning: {err}; restarting from step 0", file=sys.stderr)
        return None


class Loop:
    """One rank's training loop over a run folder (locked by rank 0): where the run stands
    (`step`, `durable`, `wall_s`) and what it trains with. Only rank 0 writes files."""

    dataset: LatentDataset
    dims: dict[str, int]
    nets: Nets
    iterations: Iterations
    meter: Meter
    stop: StopSignals
    wall_before: float  # training seconds of the attempts before this one
    started: float  # perf_counter when this attempt's first step began

    def __init__(self, config: RunConfig, run_dir: Path, where: distributed.DistEnv):
        self.config, self.run_dir, self.where = config, run_dir, where
        self.main = where.is_main
        self.device = resolve_device(config, where.local_rank)
        self.step = 0
        self.durable = 0  # the step of the last checkpoint written: where a resume starts
        self.wall_s = 0.0
        self.reporter: Reporter | None = None
        self.outcome = "interrupted"  # what the reporter closes with unless the run ends otherwise

    def run(self, status: dict[str, Any] | None, restart: bool) -> str:
        """Resume (or start), train until the run ends and return its final state; an exception
        is recorded as `failed` and re-raised."""
        # Read before the try: a refusal here is the user's to decide, not a `failed` run.
        state = resume_state(self.run_dir, status, restart)
        self.durable = int(state["step"]) if state is not None else 0
        self.stop = StopSignals(self.where.world_size == 1)
        try:
            self.build(state)
            del state  # the loaded CPU copy of every tensor is no longer needed
            self.write_headers()
            self.reporter = Reporter(self.config, self.run_dir, self.dataset, self.nets, self.device, self.step,
                                     self.main)
            self.started = time.perf_counter()
            self.outcome = self.train()
            return self.outcome
        except Exception as err:
            self.outcome = "failed"
            self.record_failure(err)
            raise
        finally:  # also on KeyboardInterrupt/SystemExit, which leave the run `running` (resumable)
            self.stop.restore()
            if self.reporter is not None:
                self.reporter.close(self.outcome)

    def build(self, state: dict[str, Any] | None) -> None:
        """The data, the nets and the iterations over them, restored from `state` if given."""
        t = self.config.train
        if t.batch % self.where.world_size:
            raise ConfigError(f"train.batch={t.batch} is not divisible by the {self.where.world_size} ranks")
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA, as the official code
        self.dataset = load_dataset(self.config.data)
        self.dims = data_dims(self.dataset)
        self.nets = build_nets(self.config, self.dims, self.device)
        self.iterations = Iterations(self.config, self.nets, self.dataset, self.device, self.where)
        self.meter = Meter()
        self.wall_before = 0.0
        if state is not None:
            restore(self.nets, state, self.meter)
            self.step, self.wall_before = int(state["step"]), float(state["wall_s"])

    def write_headers(self) -> None:
        """Rank 0: config, model summary and provenance; stats past the resume point dropped (or,
        from step 0, the old ones set aside); status `running`."""
        if not self.main:
            return
        save_config(self.config, self.run_dir / rundir.CONFIG)
        repa_dim = self.nets.encoder.dim if self.nets.encoder is not None else None
        rundir.write_json_atomic(self.run_dir / rundir.MODEL, describe(self.config, **self.dims, repa_dim=repa_dim))
        rundir.record_attempt(self.run_dir, device_name(self.device), self.step, torch.get_num_threads())
        if self.step:
            rundir.truncate_stats(self.run_dir, self.step)  # lines past the checkpoint are about to be redone
        elif moved := rundir.set_aside(self.run_dir / rundir.STATS):  # a run's history is never deleted
            cli.say(f"warning: training from step 0; the old stats are kept in {moved}", file=sys.stderr)
        self.set_status("running")

    def train(self) -> str:
        """Iterate to `train.steps`; return how the run ended. A stop signal checkpoints the step
        reached and ends the process (StopSignals.die)."""
        t, steps = self.config.train, self.config.train.steps
        while self.step < steps:
            is_eval = (self.step + 1) % self.config.eval.every == 0 or self.step + 1 == steps
            # Diagnostics measure how far one step moves G's output and D's logits.
            previous = (copy.deepcopy(self.nets.G), copy.deepcopy(self.nets.D)) if is_eval and self.main else None
            terms = self.iterate()

            if bad := sorted(key for key, value in terms.items() if not math.isfinite(value)):
                self.reporter.log(self.step, self.meter, self.wall_s)
                return self.end("diverged", f"non-finite {', '.join(bad)} at step {self.step}")
            if self.step % t.log_every == 0 or is_eval:
                collapse = self.reporter.log(self.step, self.meter, self.wall_s, previous)
                # Only rank 0 evaluates, so only a single process can stop on it in step.
                if collapse and t.collapse_stop and self.where.world_size == 1:
                    self.save_checkpoint(snapshot=False)
                    return self.end("collapsed", collapse["reason"])
            if self.main and (self.step % t.ckpt_every == 0 or self.step == steps or self.stop.received is not None):
                self.save_checkpoint(snapshot=self.step % t.snapshot_every == 0)
                # The recorded step follows the checkpoints, so a later failure to resume never
                # reports less progress than a good checkpoint holds.
                self.set_status("running")
            del previous
            if self.stop.received is not None and self.step < steps:
                self.obey_stop()

        # A collapse that did not stop the run (train.collapse_stop off, or several ranks) still
        # ends it as `collapsed`, at the step the rule fired.
        fired = self.reporter.collapse.fired if self.main else None
        if fired:
            return self.end("collapsed", fired["reason"], step=fired["step"])
        return self.end("completed")

    def iterate(self) -> dict[str, float]:
        """Training iteration `step`, timed into the meter; returns its rank-averaged terms."""
        tick = time.perf_counter()
        terms = reduce_terms(self.iterations(self.step))
        self.step += 1
        self.meter.add(terms, time.perf_counter() - tick)
        self.reporter.step()
        self.wall_s = self.wall_before + time.perf_counter() - self.started
        return terms

    def save_checkpoint(self, snapshot: bool) -> None:
        """Checkpoint the step reached (also as a kept snapshot when `snapshot`)."""
        state = training_state(self.nets, self.step, self.meter, self.wall_s, self.dims)
        checkpoint.save(self.run_dir / "checkpoints", state, snapshot=snapshot)
        self.durable = self.step

    def set_status(self, state: str, reason: str | None = None, step: int | None = None) -> None:
        """Rank 0: status.json at `step` (default: the step reached) with the last checkpoint's step."""
        if self.main:
            rundir.write_status(self.run_dir, state, self.step if step is None else step, reason,
                                checkpoint_step=self.durable)

    def end(self, state: str, reason: str | None = None, step: int | None = None) -> str:
        """Record the final `state` and return it."""
        self.set_status(state, reason, step)
        return state

    def record_failure(self, err: Exception) -> None:
        """Record `err` as the run's failure, noting on it when even that cannot be written."""
        try:
            self.set_status("failed", f"{type(err).__name__}: {err}")
        except OSError as status_err:  # the disk that failed the run may refuse this too
            err.add_note(f"status.json could not record the failure either: {status_err}")

    def obey_stop(self) -> NoReturn:
        """End the process by the stop signal received, the step reached being checkpointed."""
        cli.say(f"{self.run_dir}: signal {self.stop.received} at step {self.step}; checkpointed, stopping",
                file=sys.stderr)
        self.reporter.close(self.outcome)
        self.reporter = None
        self.stop.die()


# ---------------------------------------------------------------------------------------------
# Terms and their averages


def reduce_terms(terms: dict[str, Tensor]) -> dict[str, float]:
    """Rank-averaged terms as floats: one small all-reduce and one device sync per step, so
    every rank takes the same divergence decision."""
    keys = sorted(terms)
    values = distributed.all_mean(torch.stack([terms[k] for k in keys])).tolist()
    return dict(zip(keys, values))


class Meter:
    """Sums of the logged terms and step time since the last stats line (checkpointed, so a
    resumed run writes the same averages)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.seconds = 0.0

    def add(self, values: dict[str, float], seconds: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.seconds += seconds

    def flush(self) -> dict[str, Any]:
        """Means since the last flush (None for a term never logged), then reset."""
        means: dict[str, Any] = {key: self.sums[key] / self.steps if key in self.sums else None for key in LOGGED_TERMS}
        means["sec_per_step"] = self.seconds / max(self.steps, 1)
        self.reset()
        return means

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "steps": self.steps, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.steps, self.seconds = dict(state["sums"]), state["steps"], state["seconds"]


# ---------------------------------------------------------------------------------------------
# Reporting (rank 0)


class Reporter:
    """Rank 0's outputs at log and eval ticks: stats lines, W&B, progress, Fréchet distance,
    diagnostics and sample grids. On other ranks every method is a no-op."""

    def __init__(self, config: RunConfig, run_dir: Path, dataset, nets: Nets, device: torch.device,
                 start: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        self.config, self.run_dir, self.nets, self.device = config, run_dir, nets, device
        self.num_classes = dataset.num_classes
        self.wandb = WandbLog(config, run_dir, start)
        self.progress = Progress(config, start, config.train.steps)
        self.decoder = load_decoder(config.data).to(device)
        wants_fd = config.eval.extractor != "none" and config.eval.num_samples > 0
        self.evaluator = Evaluator(config, dataset, self.decoder, device) if wants_fd else None
        self.probe = diagnostics.make_probe(dataset, config, nets.G.z_dim, device)
        self.collapse = CollapseWatch(config.train.collapse_fd_ratio, config.train.collapse_patience)
        if start and (run_dir / rundir.STATS).exists():  # a resume replays the evals it keeps
            for line in (run_dir / rundir.STATS).read_text().splitlines():
                record = json.loads(line)
                self.collapse.update(record["step"], record.get("metrics") or {})

    def step(self) -> None:
        if self.enabled:
            self.progress.step()

    def log(self, step: int, meter: Meter, wall_s: float,
            previous: tuple[nn.Module, nn.Module] | None = None) -> dict[str, Any] | None:
        """Write one stats line; with `previous` (the weights one step ago) it is an eval tick.
        Returns the collapse record when this eval fires the collapse rule."""
        if not self.enabled:
            return None
        means = meter.flush()
        batch = self.config.train.batch
        record: dict[str, Any] = {"step": step, "images_seen": step * batch, "wall_s": wall_s}
        record.update({key: means[key] for key in LOGGED_TERMS})
        record.update(
            lr_g=self.nets.lr_g, lr_d=self.nets.lr_d, sec_per_step=means["sec_per_step"],
            images_per_s=batch / means["sec_per_step"] if means["sec_per_step"] > 0 else None,
            peak_mem_mb=peak_memory_mb(self.device),
        )
        samples: dict[float, Path] = {}
        if previous is not None:
            record["metrics"] = self.evaluator(self.nets.G_ema) if self.evaluator is not None else {}
            record["diagnostics"] = diagnostics.measure(self.nets.G, self.nets.D, *previous, self.probe)
            samples = save_sample_grids(self.run_dir, step, self.nets.G_ema, self.decoder, self.config,
                                        self.num_classes, self.device)
            if collapse := self.collapse.update(step, record["metrics"]):
                record["collapse"] = collapse
        rundir.append_stats(self.run_dir, record)
        self.wandb.log(record, samples)
        self.progress.report(record)
        return record.get("collapse")

    def close(self, state: str) -> None:
        if self.enabled:
            self.progress.close()
            self.wandb.finish(exit_code=0 if state in rundir.FINAL_STATES else 1)


class CollapseWatch:
    """Collapse with finite losses (docs/run_folder.md): the eval metric (FD, lower is better)
    above `ratio` × its best so far at `patience` evals in a row. `patience` 0 never fires."""

    def __init__(self, ratio: float, patience: int):
        self.ratio, self.patience = ratio, patience
        self.best, self.streak, self.since = math.inf, 0, None
        self.fired: dict[str, Any] | None = None

    def update(self, step: int, metrics: dict[str, float]) -> dict[str, Any] | None:
        """Feed one eval's metrics; return the collapse record the first time the rule fires."""
        if not metrics or not self.patience or self.fired is not None:
            return None
        name, value = next(iter(metrics.items()))
        if value > self.ratio * self.best:
            self.streak += 1
            self.since = self.since if self.streak > 1 else step
        else:
            self.best, self.streak = min(self.best, value), 0
        if self.streak < self.patience:
            return None
        self.fired = {"step": step, "signal": name, "value": value, "best": self.best, "since": self.since,
                      "reason": f"{name} {value:.4g} above {self.ratio:g}x its best {self.best:.4g} "
                                f"at {self.patience} evals in a row since step {self.since}"}
        return self.fired


def save_sample_grids(run_dir: Path, step: int, G_ema: nn.Module, decoder: Callable[[Tensor], Tensor],
                      config: RunConfig, num_classes: int, device: torch.device) -> dict[float, Path]:
    """samples/step-XXXXXXX.png (no truncation) and …-psi{eval.sample_psi}.png, one class per
    column cycle, the same z at every step so grids can be compared over training. Returns the
    files written, by psi."""
    from PIL import Image

    folder = run_dir / rundir.SAMPLES
    folder.mkdir(exist_ok=True)
    labels = torch.arange(GRID_SIZE) % num_classes
    written = {}
    for psi, suffix in ((0.0, ""), (config.eval.sample_psi, f"-psi{config.eval.sample_psi:g}")):
        chunks = [decoder(x) for x, _ in generate(G_ema, GRID_SIZE, num_classes, config.seed, device, psi=psi, labels=labels)]
        written[psi] = folder / f"step-{step:07d}{suffix}.png"
        Image.fromarray(image_grid(torch.cat(chunks))).save(written[psi])
    return written


class Evaluator:
    """Fréchet distance of the EMA generator (untruncated, as the official training loop) against
    reference statistics, named by `contract.metric_names` (fid5k, fid5k_train, fd_fmnist...)."""

    def __init__(self, config: RunConfig, dataset, decoder: Callable[[Tensor], Tensor], device: torch.device):
        self.config, self.device, self.decoder = config, device, decoder
        self.num_classes = dataset.num_classes
        self.metric = metric_name(config.eval.extractor, config.eval.num_samples, bool(config.eval.ref_stats))
        if config.eval.extractor == "inception" and not config.eval.ref_stats:
            cli.say(
                f"warning: eval.ref_stats is empty, so FID is measured against {config.eval.num_samples} training "
                f"images and logged as {self.metric}; it is not comparable with published FID. For ImageNet-256, "
                "set eval.ref_stats to ADM's VIRTUAL_imagenet256_labeled.npz (see README, 'Comparable FID')",
                file=sys.stderr,
            )
        self.extractor = gat_eval.load_extractor(config.eval, device)
        if config.eval.ref_stats:
            self.ref = gat_eval.load_ref_stats(config.eval.ref_stats, self.extractor)
        else:  # cached across runs by gat.eval, keyed by the data and the extractor
            self.ref = gat_eval.dataset_stats(dataset, self.extractor, config.eval.num_samples, seed=0)

    @torch.no_grad()
    def __call__(self, G_ema: nn.Module) -> dict[str, float]:
        cfg = self.config.eval
        chunks = generate(G_ema, cfg.num_samples, self.num_classes, self.config.seed + 1, self.device)
        # A 50k-sample FID takes minutes: a bar of its own where the run shows one.
        with tqdm(total=cfg.num_samples, unit="img", desc=f"eval {self.metric}", leave=False,
                  disable=not wants_bar(self.config)) as bar:
            features = []
            for x, _ in chunks:
                features.append(self.extractor(self.decoder(x)).double().cpu())
                bar.update(len(x))
        mu, sigma = gat_eval.feature_stats(torch.cat(features))
        return {self.metric: float(gat_eval.frechet_distance(mu, sigma, *self.ref))}


def wants_bar(config: RunConfig) -> bool:
    """Progress bars (`logging.progress`): `bar` always, `auto` on a terminal, `lines` never."""
    mode = config.logging.progress
    return mode == "bar" or (mode == "auto" and sys.stderr.isatty())


class Progress:
    """A tqdm bar on a terminal, plain lines otherwise (`logging.progress`)."""

    def __init__(self, config: RunConfig, start: int, total: int):
        self.bar = None
        if wants_bar(config):
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def report(self, record: dict[str, Any]) -> None:
        keys = ("loss_d", "loss_g", "grad_norm_d", "grad_norm_g", "sec_per_step")
        summary = {k: f"{record[k]:.4g}" for k in keys if record.get(k) is not None}
        summary.update({k: f"{v:.4g}" for k, v in record.get("metrics", {}).items()})
        if self.bar is not None:
            self.bar.set_postfix(summary, refresh=False)
        else:
            print(f"step {record['step']}: " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# Signals, folder checks, checkpoint contents


class StopSignals:
    """SIGTERM (SLURM before a preemption or the time limit), SIGUSR2 (submitit) and SIGINT are
    noted, not obeyed at once: the loop finishes its step and checkpoints, then `die` ends the
    process by the same signal, which the sweep job treats as requeue-able. Only for a single
    process in the main thread: ranks of a multi-process run could stop at different steps."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)

    def __init__(self, enabled: bool):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        if enabled and threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._note) for sig in self.SIGNALS}

    def _note(self, signum: int, frame: Any) -> None:
        self.received = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def die(self) -> None:
        """Exit by the signal received, with its default action (rc -N, i.e. 128+N in a shell)."""
        self.restore()
        signal.signal(self.received, signal.SIG_DFL)
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), self.received)


def check_run_dir(config: RunConfig, run_dir: Path, announce: bool = True) -> dict[str, Any] | None:
    """Refuse a folder that holds another config; return its status (None for a fresh folder).
    Keys in COSMETIC_KEYS may differ: the run resumes with the new values (said when `announce`)."""
    existing = run_dir / rundir.CONFIG
    if existing.is_file():
        theirs = to_dict(load_config(existing))
        ours = to_dict(config)
        diff = sorted(_diff_keys(theirs, ours))
        # a cosmetic key's nested values (logging.grid_point.seed) are cosmetic too
        changed = [key for key in diff if not any(key == c or key.startswith(c + ".") for c in COSMETIC_KEYS)]
        if changed:
            raise ConfigMismatchError(
                f"{run_dir} holds a run with a different config (differs at: {', '.join(changed)}); "
                "use another --out folder"
            )
        if diff and announce:
            print(f"{run_dir}: resuming with new {', '.join(diff)} (they do not change the run; config.yaml is updated)")
    return rundir.read_status(run_dir)


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            keys += _diff_keys(a[key], b[key], f"{prefix}{key}.")
        elif a.get(key) != b.get(key):
            keys.append(prefix + key)
    return keys


def training_state(nets: Nets, step: int, meter: Meter, wall_s: float, dims: dict[str, int]) -> dict[str, Any]:
    """Everything a resume needs (and the dims the sampler needs to rebuild G)."""
    return {
        "step": step,
        "G": nets.G.state_dict(), "D": nets.D.state_dict(), "G_ema": nets.G_ema.state_dict(),
        "opt_g": nets.opt_g.state_dict(), "opt_d": nets.opt_d.state_dict(),
        "rng": checkpoint.rng_state(), "meter": meter.state_dict(), "wall_s": wall_s, "dims": dims,
    }


def restore(nets: Nets, state: dict[str, Any], meter: Meter) -> None:
    for name in ("G", "D", "G_ema", "opt_g", "opt_d"):
        getattr(nets, name).load_state_dict(state[name])
    meter.load_state_dict(state["meter"])
    checkpoint.set_rng_state(state["rng"])


# ---------------------------------------------------------------------------------------------
# CLI


def dry_run(config: RunConfig) -> None:
    """Print the resolved config and the model summary; write nothing."""
    dims = data_dims(load_dataset(config.data))
    encoder = load_encoder(config.repa, "cpu")
    summary = describe(config, **dims, repa_dim=encoder.dim if encoder is not None else None)
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
    print("---")
    print(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 also for a diverged run: it is a result)."""
    args = parser().parse_args(argv)

    def body() -> int:
        overrides = parse_set(args.overrides)
        if args.device is not None:
            overrides["device"] = args.device
        config = load_config(args.config, overrides)
        resolve_device(config)  # `--device cuda` on a machine without one: an error, before any folder
        if args.dry_run:
            dry_run(config)
            return 0
        try:
            state = run(config, Path(args.out), restart=args.restart)
        except OSError as err:  # a full disk, a read-only or unwritable folder: not a bug to trace
            err.add_note("the run stopped; free space or fix permissions, then rerun to resume from the last checkpoint")
            raise
        cli.say(f"{args.out}: {state}")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
