"""Train the project's tiny AutoencoderKL on Fashion-MNIST and save it to gat/assets/fmnist_vae.

Seeded and CPU-sized (a few minutes on 2 cores). Loss: per-image L1 reconstruction plus a
small KL term, so the posterior keeps a usable spread without blurring reconstructions.
After training, `scaling_factor` is set to 1/std of posterior samples over a training subset,
so the GAN sees unit-variance latents. Prints the test-set reconstruction error at the end.

    python scripts/train_fmnist_vae.py [--steps 400] [--out gat/assets/fmnist_vae]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gat.data.fashion_mnist import load_fashion_mnist
from gat.data.vae import FMNIST_VAE_DIR, encode_moments, tiny_vae_config, to_vae_input


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-3, help="weight of the per-image KL sum")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--out", type=Path, default=FMNIST_VAE_DIR)
    return parser.parse_args()


@torch.inference_mode()
def reconstruction_error(vae, images: np.ndarray) -> dict[str, float]:
    """MSE / PSNR in [0,1] pixel units of decode(posterior mean) on uint8 images [N,32,32]."""
    x = torch.from_numpy(images)
    mean, _ = encode_moments(vae, x)
    recon = ((vae.decode(mean).sample + 1) / 2).clamp(0, 1)
    target = x.float().unsqueeze(1) / 255.0
    mse = float(((recon - target) ** 2).mean())
    return {"mse": mse, "psnr_db": float(10 * np.log10(1.0 / mse)), "l1": float((recon - target).abs().mean())}


def main() -> None:
    args = parse_args()
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_x, _ = load_fashion_mnist(args.data, "train")
    test_x, _ = load_fashion_mnist(args.data, "test")
    data = torch.from_numpy(train_x)
    vae = AutoencoderKL(**tiny_vae_config())
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps, eta_min=args.lr * 0.05)
    rng = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(data), (args.batch,), generator=rng)
        x = to_vae_input(data[idx], 1)
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(generator=rng)).sample
        rec = (recon - x).abs().flatten(1).sum(1).mean()
        kl = dist.kl().mean()
        loss = rec + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == 1:
            print(f"step {step:5d}  rec_l1_sum {rec.item():8.2f}  kl {kl.item():8.1f}  {time.time() - start:6.1f}s", flush=True)
    vae.eval()

    # Posterior samples over a fixed subset give the latent std the GAN will see.
    subset = torch.from_numpy(train_x[:5000])
    means, stds = zip(*(encode_moments(vae, chunk) for chunk in subset.split(500)))
    mean, std = torch.cat(means), torch.cat(stds)
    samples = mean + std * torch.randn(mean.shape, generator=rng)
    scaling = float(1.0 / samples.std())
    vae.register_to_config(scaling_factor=scaling)

    metrics = reconstruction_error(vae, test_x[:1000])
    args.out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(str(args.out), safe_serialization=True)
    report = {
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "kl_weight": args.kl_weight, "seed": args.seed,
        "train_seconds": round(time.time() - start, 1), "scaling_factor": scaling,
        "posterior_std_mean": float(std.mean()), "test_recon_1000": metrics,
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
