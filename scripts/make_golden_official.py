"""Record what the official GAT code computes on a tiny G and D, as a parity reference for gatscale.

    python scripts/make_golden_official.py OFFICIAL [OUT.pt]     (OUT defaults to tests/data/golden_official.pt)

OFFICIAL is a checkout of https://github.com/hse1032/GAT (a work tree, or a bare git directory,
whose HEAD is then extracted to a temporary folder). tests/data/golden_official.pt was written
from commit 21a2dd09fcee5b8b8849302dc2ac4dd66236d268, which the file records; the script warns
when the checkout is another commit. It needs torch, timm and einops (timm's torchvision import
is stubbed: the official modules use none of it) and imports nothing from gatscale. Not run in CI;
tests/test_golden_official.py checks gatscale against the file.

What is recorded, on CPU with one thread:
- a tiny official G and D (width 64, depth 4, 4 heads, patch 2, 4x16x16 latents, 10 classes,
  z of 64, K = 4 levels, D's projection head / class embedding 64 wide, a REPA projector
  64 -> 64 -> 32): the official init, then every parameter moved off its init (zero biases,
  unit gains and LayerScales would hide a wrong key) and the q and k rows of every qkv layer
  scaled by 0.03 (so the QK-norm sees a mean square near 1e-3, where its eps shows), then
  rounded to 8 bits per tensor with a power-of-two scale. The stored int8 values times 2^exp
  are the exact float32 weights the outputs were computed with (8 bits keep the file small);
  the rest of the state dicts (the fixed sin-cos position embeddings, RoPE tables, w_avg) is
  stored as it is;
- inputs: reals [B, 4, 16, 16], z, labels;
- in float32: G's K levels (multiscale=True); D's logits and REPA projector output (cls first)
  on those levels, unaugmented;
- in float64 (the same weights; see `record` for why, and for the QK-norm eps it keeps): one
  official D step and one G step of losses/Rp_loss.py's RpGANLoss (approximate R1/R2,
  gamma 0.1, sigma 0.01, DiffAugment color,translation,cutout,flip, MNG noise), with colour
  augmentation on and off: every D call's logits, the losses, and the gradients of D's first
  (patch embedding) and last (cls head linear) layers after the D step and of G's first
  (mapping) and last (final output head) layers after the G step;
- the random draws the official code made (augmentation parameters, MNG unit noise, the
  penalties' shift noise), so gatscale can replay them. The official code draws its own
  randomness; wrappers here only record it, and make its Gaussian draws in float32 (widened to
  float64), so they are stored in float32 exactly. Both variants run from one seed; for "off"
  the official colour op runs with probability 0 (every sample untouched, the same RNG
  consumed), so the two variants share every draw but the colour mask. Gradients are stored
  rounded to float32.
"""
from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # the official RoPE is torch.compile'd; run it eagerly

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

OFFICIAL_COMMIT = "21a2dd09fcee5b8b8849302dc2ac4dd66236d268"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "golden_official.pt"

BATCH = 2
DIMS = {"latent_channels": 4, "latent_size": 16, "num_classes": 10}
SIZE = {"width": 64, "depth": 4, "heads": 4, "patch": 2}
Z_DIM = 64  # the official G's `latent_size` (its z width)
CMAP_DIM = 64  # D's projection head and class embedding (2048 in the paper)
PROJECTOR_HIDDEN = 64
REPA_DIM = 32
QK_SCALE = 0.03
SEED = 11  # the first seed whose four colour masks each mix coloured and plain samples


def _checkout(path: Path, scratch: Path) -> tuple[Path, str]:
    """The folder to import the official modules from, and its commit."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True)
        return done.stdout.strip()

    if (path / "models" / "generator.py").is_file():
        try:
            return path, git("rev-parse", "HEAD")
        except (subprocess.CalledProcessError, FileNotFoundError):
            return path, "unknown (not a git checkout)"
    commit = git("rev-parse", "HEAD")  # a bare repository: extract HEAD
    archive = subprocess.run(["git", "-C", str(path), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
    return scratch, commit


class Recorded(nn.Module):
    """The network, reachable as `.module` as under accelerate's DDP, recording what D returns."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.logits: list[torch.Tensor] = []

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        self.logits.append((out[0] if isinstance(out, tuple) else out).detach().clone())
        return out


def _move_off_init_and_quantize(model: nn.Module, gen: torch.Generator, equal_linear: type) -> dict:
    """Perturb every parameter (module docstring), round it to int8·2^exp, load the result
    back, and return {name: (int8 values, exp)}."""
    lr_mult = {
        f"{name}.{key}": module.lr_mult
        for name, module in model.named_modules() if isinstance(module, equal_linear)
        for key, _ in module.named_parameters(recurse=False)
    }
    stored = {}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if not p.requires_grad:  # the fixed sin-cos position embeddings
                continue
            noise = torch.randn(p.shape, generator=gen)
            if p.numel() > 1 and p.std() > 0:
                value = p + 0.25 * p.pow(2).mean().sqrt() * noise
            else:  # constant at init: zero biases, unit gains, LayerScale 0.1
                value = p + max(0.2 * p.abs().max().item(), 0.05) / lr_mult.get(name, 1.0) * noise
            if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias"):
                value[: 2 * value.shape[0] // 3] *= QK_SCALE  # q and k rows
            exp = math.ceil(math.log2(value.abs().max().item() / 127))
            q = torch.round(value / 2.0**exp).clamp(-127, 127).to(torch.int8)
            p.copy_(q.float() * 2.0**exp)
            stored[name] = (q, exp)
    return stored


def _aug_draw(params: dict, policy: str) -> dict:
    """The random part of one official DiffAugment draw (the colour means are derived)."""
    out = {}
    if "color" in policy:
        mask, bright, _, sat, _, cont = params["color"][0]
        out.update(color_mask=mask.clone(), brightness_noise=bright.flatten().clone(),
                   saturation_noise=sat.flatten().clone(), contrast_noise=cont.flatten().clone())
    tx, ty, h, w = params["translation"][0]
    out.update(translation_h=tx.flatten().clone(), translation_w=ty.flatten().clone(), translation_at=(h, w))
    size, ox, oy, h, w = params["cutout"][0]
    out.update(cutout_size=tuple(size), cutout_h=ox.flatten().clone(), cutout_w=oy.flatten().clone(), cutout_at=(h, w))
    out.update(flip_noise=params["flip"][0].clone())
    return out


def _step(loss_fn, G: Recorded, D: Recorded, inputs: dict, Rp_loss) -> dict:
    """One official D step and one G step with recording wrappers; draws, logits, losses, grads."""
    draws = {"augment": [], "noise": [], "eps": []}
    aug = Rp_loss.aug

    def recording_aug(x, prob=1.0, policy="", channels_first=True, aug_params=None):
        out, params = aug(x, prob=prob, policy=policy, channels_first=channels_first, aug_params=aug_params)
        if aug_params is None:
            draws["augment"].append(_aug_draw(params, policy))
        return out, params

    nest = loss_fn.apply_gaussian_list_cumulative

    def recording_nest(xs, seed_noise=None, min_info=0.125):
        out, used = nest(xs, seed_noise, min_info)
        if seed_noise is None:
            draws["noise"].append([n.float() for n in used])  # float32 draws, widened
        return out, used

    penalty = loss_fn.approximated_gradient_penalty

    def recording_penalty(data, pred, model, model_kwargs={}):
        randn_like, drawn = torch.randn_like, []

        def recording_randn_like(x, *args, **kwargs):
            drawn.append(randn_like(x, *args, **kwargs))
            return drawn[-1]

        torch.randn_like = recording_randn_like
        try:
            return penalty(data, pred, model, model_kwargs)
        finally:
            torch.randn_like = randn_like
            draws["eps"].append([e.float() for e in drawn])  # float32 draws, widened

    randn_like = torch.randn_like

    def float32_randn_like(x):  # a float32 draw widened to x's dtype, so it can be stored in float32
        return randn_like(x, dtype=torch.float32).to(x.dtype)

    Rp_loss.aug = recording_aug
    loss_fn.apply_gaussian_list_cumulative = recording_nest
    loss_fn.approximated_gradient_penalty = recording_penalty
    torch.randn_like = float32_randn_like
    try:
        kwargs = {"y": inputs["labels"], "z": inputs["z"], "x": torch.zeros_like(inputs["reals"])}
        out = {}
        # D step, as train.py: D trainable, G run without grad inside.
        D.module.requires_grad_(True)
        D.logits.clear()
        loss, terms, _ = loss_fn.step_disc(G, D, None, inputs["reals"], None, 0, dict(kwargs))
        loss.mean().backward()
        first, last = D.module.x_embedder.proj, D.module.final_layer[1]
        fake_logits, real_logits = D.logits[:2]
        out["d_step"] = {
            "logits": [l.flatten() for l in D.logits],  # fakes, reals, shifted reals, shifted fakes
            # step_disc's own expression; its loss_dict["disc_loss"] is the tensor `loss` that
            # `loss += γ/2·R` then adds the penalties to in place, so it logs the total.
            "d_adv": torch.nn.functional.softplus(-(real_logits - fake_logits)).mean(-1).mean(),
            "r1": terms["r1_loss"].mean().detach(),
            "r2": terms["r2_loss"].mean().detach(), "loss": loss.mean().detach(),
            "grads": {"D.patch_embed.weight": first.weight.grad.float(), "D.patch_embed.bias": first.bias.grad.float(),
                      "D.head.1.weight": last.weight.grad.float()},
        }
        D.module.zero_grad(set_to_none=True)
        D.module.requires_grad_(False)
        out["d_step_draws"] = {"fake_aug": draws["augment"][0], "real_aug": draws["augment"][1],
                               "fake_noise": draws["noise"][0], "real_noise": draws["noise"][1],
                               "real_eps": draws["eps"][0], "fake_eps": draws["eps"][1]}
        for value in draws.values():
            value.clear()
        # G step: G trainable, D frozen.
        G.module.requires_grad_(True)
        D.logits.clear()
        loss, terms, _ = loss_fn.step_gen(G, D, None, inputs["reals"], None, 0, dict(kwargs))
        loss.mean().backward()
        first, last = G.module.latent_embedder[0], G.module.final_layers[-1].linear
        out["g_step"] = {
            "logits": [l.flatten() for l in D.logits],  # fakes, reals
            "loss": loss.mean().detach(),
            "grads": {"G.mapping_net.0.weight": first.weight.grad.float(),
                      "G.heads.3.linear.weight": last.weight.grad.float()},
        }
        G.module.zero_grad(set_to_none=True)
        G.module.requires_grad_(False)
        out["g_step_draws"] = {"fake_aug": draws["augment"][0], "real_aug": draws["augment"][1],
                               "fake_noise": draws["noise"][0], "real_noise": draws["noise"][1]}
        assert not draws["eps"]
    finally:
        torch.randn_like = randn_like
        Rp_loss.aug = aug
        del loss_fn.apply_gaussian_list_cumulative, loss_fn.approximated_gradient_penalty
    return out


def record(official: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_step import allow_timm_without_torchvision  # the step benchmark times the same code

    allow_timm_without_torchvision()
    sys.path.insert(0, str(official))
    import losses.diffaug as diffaug
    import losses.Rp_loss as Rp_loss
    from models.custom_layers import EqualLinear
    from models.discriminator import GATD
    from models.generator import GAT

    block = {"fused_attn": True, "qk_norm": True}
    common = {"input_size": DIMS["latent_size"], "patch_size": SIZE["patch"], "in_channels": DIMS["latent_channels"],
              "hidden_size": SIZE["width"], "depth": SIZE["depth"], "num_heads": SIZE["heads"],
              "num_classes": DIMS["num_classes"], "z_dims": [REPA_DIM], **block}
    torch.manual_seed(SEED)
    G = GAT(latent_size=Z_DIM, **common)
    D = GATD(projector_dim=PROJECTOR_HIDDEN, cmap_dim=CMAP_DIM, **common)
    gen = torch.Generator().manual_seed(SEED + 1)
    weights = {name: _move_off_init_and_quantize(net, gen, EqualLinear) for name, net in (("G", G), ("D", D))}
    G.train(), D.train()
    G.requires_grad_(False), D.requires_grad_(False)
    fixed = {name: {key: value.clone() for key, value in net.state_dict().items() if key not in weights[name]}
             for name, net in (("G", G), ("D", D))}

    data = torch.Generator().manual_seed(SEED + 2)
    inputs = {
        "reals": torch.randn(BATCH, DIMS["latent_channels"], DIMS["latent_size"], DIMS["latent_size"], generator=data),
        "z": torch.randn(BATCH, Z_DIM, generator=data),
        "labels": torch.randperm(DIMS["num_classes"], generator=data)[:BATCH],
    }
    # Forward passes in float32, where the official QK-norm's eps=None means float32's eps.
    with torch.no_grad():
        levels = G(x=torch.zeros_like(inputs["reals"]), y=inputs["labels"], z=inputs["z"], multiscale=True)
        logits, aux = D(levels, y=inputs["labels"], return_aux=True)
    outputs = {"G_levels": levels.clone(), "D_logits": logits.flatten().clone(),
               "D_projected": torch.cat(aux["x_feat"], dim=1).clone()}

    # The training steps in float64: aR1/aR2 divide logit differences by σ = 0.01, and in
    # float32 rounding alone moves them by ~1e-3 relative here. The QK-norm keeps the eps it
    # has in float32 (its eps=None would mean float64's in float64).
    G.double(), D.double()
    for module in (*G.modules(), *D.modules()):
        if isinstance(module, nn.RMSNorm) and module.eps is None:
            module.eps = torch.finfo(torch.float32).eps
    step_inputs = {key: value.double() if value.is_floating_point() else value for key, value in inputs.items()}
    loss_fn = Rp_loss.RpGANLoss(encoders=None, accelerator=None, r1_every=1, r1_gamma=0.1, r2_every=1, r2_gamma=0.1,
                                approximate=True)
    colour = diffaug.AUGMENT_FNS["color"]
    for name, p in (("color_on", 0.5), ("color_off", 0.0)):
        diffaug.AUGMENT_FNS["color"] = [functools.partial(diffaug.rand_brightness_saturation_contrast, p=p)]
        torch.manual_seed(SEED + 3)
        np.random.seed(SEED + 3)
        try:
            outputs[name] = _step(loss_fn, Recorded(G), Recorded(D), step_inputs, Rp_loss)
        finally:
            diffaug.AUGMENT_FNS["color"] = colour
    # One set of draws serves both variants: they differ only in the colour mask.
    on, off = outputs["color_on"], outputs["color_off"]
    draws = {}
    for step in ("d_step_draws", "g_step_draws"):
        draws[step] = on.pop(step)
        _assert_same_draws(draws[step], off.pop(step))
    for step in draws.values():
        for view in ("fake_aug", "real_aug"):
            mask = step[view]["color_mask"]
            assert mask.any() and not mask.all(), f"seed {SEED}: a colour mask is not mixed, pick another"
    return {"weights": weights, "fixed": fixed,
            "inputs": inputs, "draws": draws, "outputs": outputs}


def _assert_same_draws(a, b, path: str = "") -> None:
    if isinstance(a, dict):
        for key in a:
            if key != "color_mask":
                _assert_same_draws(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_draws(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"colour on/off drew different {path}"
    else:
        assert a == b, path


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or any(arg.startswith("-") for arg in argv):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1]) if len(argv) == 2 else DEFAULT_OUT
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        official, commit = _checkout(Path(argv[0]).resolve(), Path(scratch))
        if commit != OFFICIAL_COMMIT:
            print(f"warning: recording commit {commit}, not {OFFICIAL_COMMIT}", file=sys.stderr)
        golden = record(official)
    golden.update(
        official_commit=commit, torch_version=torch.__version__,
        config={**DIMS, **SIZE, "batch": BATCH, "z_dim": Z_DIM, "cmap_dim": CMAP_DIM,
                "projector_hidden": PROJECTOR_HIDDEN, "repa_dim": REPA_DIM, "levels": 4, "gamma": 0.1, "sigma": 0.01},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB) from official commit {commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
