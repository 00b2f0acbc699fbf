"""Train the small Fashion-MNIST classifier whose penultimate features give `fd_fmnist`.

Seeded and CPU-sized (minutes on 2 cores). Light augmentation (flips and 2-pixel shifts) keeps
the features from keying on exact pixel positions. Saves the weights to
gat/assets/fmnist_classifier.safetensors and a JSON report (test accuracy) beside them.

    python scripts/train_fmnist_classifier.py [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gat.data.fashion_mnist import load_fashion_mnist
from gat.eval.features import FMNIST_CLASSIFIER, FMNISTClassifier


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--out", type=Path, default=FMNIST_CLASSIFIER)
    return parser.parse_args()


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 2 pixels (zero fill) on [B,1,32,32]."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    return torch.roll(F.pad(x, (2, 2, 2, 2), value=-1.0), shifts=(dy, dx), dims=(-2, -1))[..., 2:-2, 2:-2]


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,32,32] -> [N,1,32,32] in [-1,1], what `fmnist_input` feeds the model."""
    return torch.from_numpy(images).float().unsqueeze(1) / 127.5 - 1.0


@torch.inference_mode()
def accuracy(model: FMNISTClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy on inputs already in the model's range."""
    model.eval()
    predictions = torch.cat([model(part).argmax(1) for part in images.split(1000)])
    return float((predictions == labels).float().mean())


def main() -> None:
    args = parse_args()
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_x, train_y = load_fashion_mnist(args.data, "train")
    test_x, test_y = load_fashion_mnist(args.data, "test")
    x, y = to_input(train_x), torch.from_numpy(train_y)
    tx, ty = to_input(test_x), torch.from_numpy(test_y)

    model = FMNISTClassifier()
    steps = args.epochs * (len(x) // args.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    rng = torch.Generator().manual_seed(args.seed)
    start, step = time.time(), 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=rng)
        for idx in order[: steps // args.epochs * args.batch].split(args.batch):
            loss = F.cross_entropy(model(augment(x[idx], rng)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}  test acc {accuracy(model, tx, ty):.4f}  {time.time() - start:.0f}s", flush=True)

    model.eval()
    report = {
        "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": args.seed,
        "train_seconds": round(time.time() - start, 1),
        "test_accuracy": accuracy(model, tx, ty), "train_accuracy_10k": accuracy(model, x[:10000], y[:10000]),
        "feature_dim": FMNISTClassifier.feature_dim,
        "params": sum(p.numel() for p in model.parameters()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
