"""Record what two training iterations compute, as a reference for later step implementations.

    python scripts/make_step_reference.py OUT.pt      # run with the gat package to be recorded

tests/data/step_reference.pt was written by this script on commit 680806f, the last commit whose
step scored every D pass separately, ran G twice per iteration and used per-tensor AdamW and EMA.
tests/test_step_parity.py checks that today's step computes the same losses, gradients and
weights from it to float rounding. It uses only the public step API that both implementations
share (`gat.step` today; at 680806f the same names lived in `gat.train`).
"""
from __future__ import annotations

import sys

import torch

from gat import step
from contract.config import load_config

CASES = {  # name -> overrides on gat/configs/fmnist.yaml
    "approx": {},
    "exact": {"loss.penalty": "exact"},
    "mng_off": {"mng.mode": "off"},
    "repa": {"repa.encoder": "tiny", "repa.projector_hidden": 32},
}
COMMON = {"model.width": 16, "model.depth": 4, "model.heads": 2, "model.patch": 2, "train.batch": 8, "model.d_cmap_dim": 32,
          "device": "cpu", "train.precision": "fp32"}
DIMS = {"latent_channels": 4, "latent_size": 8, "num_classes": 10}
STEPS = 2


def record(config_path: str, overrides: dict) -> dict:
    """Terms, gradients (as left by the last step) and final weights of STEPS iterations."""
    config = load_config(config_path, {**COMMON, **overrides})
    nets = step.build_nets(config, DIMS, torch.device("cpu"))
    amp = step.autocast(config, torch.device("cpu"))
    data = torch.Generator().manual_seed(1)
    out: dict = {"overrides": overrides, "terms": []}
    for iteration in range(STEPS):
        batch = step.Batch(
            reals=torch.randn(8, 4, 8, 8, generator=data),
            labels=torch.randint(10, (8,), generator=data),
            images=torch.rand(8, 3, 32, 32, generator=data) if nets.encoder is not None else None,
            z=torch.randn(8, nets.G.z_dim, generator=data),
        )
        generator = torch.Generator().manual_seed(100 + iteration)
        terms = step.train_step(nets, batch, config, generator, amp)
        out["terms"].append({key: value.item() for key, value in terms.items()})
    out["grads"] = {
        f"{name}.{key}": p.grad.clone()
        for name, net in (("G", nets.G), ("D", nets.D)) for key, p in net.named_parameters() if p.grad is not None
    }
    out["weights"] = {f"{name}.{key}": value.clone() for name in ("G", "D", "G_ema")
                      for key, value in getattr(nets, name).state_dict().items()}
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    reference = {name: record("gat/configs/fmnist.yaml", overrides) for name, overrides in CASES.items()}
    torch.save(reference, argv[0])
    print(f"wrote {argv[0]}: {', '.join(reference)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
