"""gatscale reproduces what the official GAT code computes, tensor for tensor.

tests/data/golden_official.pt was written by scripts/make_golden_official.py from the official
repository (hse1032/GAT, the commit the file records): a tiny G and D with their weights, fixed
inputs, the random draws the official code made, and what it computed with them: G's K levels,
D's logits and REPA projector output, and one D step and one G step of its RpGANLoss
(approximate R1/R2, DiffAugment with colour on and off, MNG) with their losses, every D call's
logits and the gradients of the first and last layers. Here gatscale's modules load those
weights (an explicit key mapping; both sides store EqualLinear weights divided by lr_mult),
replay the same draws (AugParams built from the official draw; the MNG unit noise and the
penalties' shift noise fed in where gatscale would draw them) and must reproduce every tensor.

Tolerance: each tensor within rtol 1e-5 and atol 1e-5·max|reference| (`_close`). CPU, one
thread. The forward outputs are compared in float32. The training steps run in float64 on both
sides (the same weights): aR1/aR2 divide logit differences by σ = 0.01, which in float32 turns
logit rounding into ~1e-3 relative noise in the penalties. The official QK-norm (nn.RMSNorm,
eps=None) keeps float32's eps there, the eps it has in float32 and in fp16/bf16 training
(torch takes it from the op's float32 math type); gatscale's always has it.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from gat import mng, objective
from gat.augment import AugParams
from contract.config import load_config
from gat.models import registry

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = torch.load(ROOT / "tests" / "data" / "golden_official.pt", weights_only=False)
CONF = GOLDEN["config"]
DIMS = {key: CONF[key] for key in ("latent_channels", "latent_size", "num_classes")}

# Official state-dict key -> gatscale key, by prefix (per block: the suffix after "blocks.<i>.").
G_KEYS = {
    "y_embedder.embedding_table.": "class_embed.",
    "latent_embedder.": "mapping_net.",
    "final_layers.{i}.adaLN_modulation.": "heads.{i}.modulation.",
    "final_layers.{i}.linear.": "heads.{i}.linear.",
}
G_BLOCK_KEYS = {"attn.": "attn.", "mlp.": "ffn.", "adaLN_modulation.": "modulation."}
G_UNUSED = {"x_embedder.proj.weight", "x_embedder.proj.bias"}  # the official G multiplies its output by 0.0
D_KEYS = {
    "x_embedder.proj.": "patch_embed.",
    "cls_token": "cls_token",
    "y_embedder.embedding_table.": "class_embed.",
    "y_embedder.latent_embedder.": "class_mapping.",
    "final_layer.": "head.",
    "proj.": "projector.",
}
D_BLOCK_KEYS = {"ls_attn": "scale_attn", "ls_mlp": "scale_ffn", "norm1.": "norm1.", "norm2.": "norm2.",
                "attn.": "attn.", "mlp.": "ffn."}


def _rename(key: str, table: dict[str, str], block_table: dict[str, str]) -> str:
    block = re.fullmatch(r"blocks\.(\d+)\.(.*)", key)
    if block:
        index, rest = block.groups()
        (old, new), = [(o, n) for o, n in block_table.items() if rest.startswith(o)]
        return f"blocks.{index}.{new}{rest[len(old):]}"
    numbered = re.match(r"(\w+)\.(\d+)\.", key)
    for old, new in table.items():
        if numbered and "{i}" in old:
            old, new = old.format(i=numbered.group(2)), new.format(i=numbered.group(2))
        if key.startswith(old):
            return new + key[len(old):]
    raise KeyError(f"no gatscale name for official weight {key}")


def official_weights(net: str) -> dict[str, torch.Tensor]:
    """The official float32 weights: int8 values times their power-of-two scale."""
    return {key: q.float() * 2.0**exp for key, (q, exp) in GOLDEN["weights"][net].items()}


def _config(colour: bool):
    return load_config(None, {
        "device": "cpu", "seed": 0,
        "model.width": CONF["width"], "model.depth": CONF["depth"], "model.heads": CONF["heads"],
        "model.patch": CONF["patch"], "model.z_dim": CONF["z_dim"], "model.d_cmap_dim": CONF["cmap_dim"],
        "mng.mode": "exp", "mng.levels": CONF["levels"],
        "loss.penalty": "approx", "loss.gamma": CONF["gamma"], "loss.sigma": CONF["sigma"],
        "repa.projector_hidden": CONF["projector_hidden"],
        "augment.color_prob": 0.5 if colour else 0.0,
    })


def _nets(colour: bool = True):
    cfg = _config(colour)
    G = registry.build_generator(cfg, **DIMS)
    D = registry.build_discriminator(cfg, **DIMS, repa_dim=CONF["repa_dim"])
    g_state = {_rename(k, G_KEYS, G_BLOCK_KEYS): v for k, v in official_weights("G").items() if k not in G_UNUSED}
    g_state["w_avg"] = GOLDEN["fixed"]["G"]["w_avg"]
    d_state = {_rename(k, D_KEYS, D_BLOCK_KEYS): v for k, v in official_weights("D").items()}
    G.load_state_dict(g_state, strict=True)
    D.load_state_dict(d_state, strict=True)
    return cfg, G.train().requires_grad_(False), D.train().requires_grad_(False)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Within rtol 1e-5 and atol 1e-5·max|expected| (compared in the reference's precision)."""
    atol = 1e-5 * expected.abs().max().item()
    torch.testing.assert_close(actual.detach().to(expected.dtype), expected, rtol=1e-5, atol=atol,
                               msg=lambda m: f"{what}: {m}")


def _aug_params(draw: dict, colour: bool) -> AugParams:
    """gatscale's AugParams for one official DiffAugment draw (losses/diffaug.py)."""
    batch = draw["flip_noise"].shape[0]
    height, width = draw["translation_at"]
    colour_fields = {}
    if colour:
        colour_fields = dict(
            color_mask=draw["color_mask"],
            brightness=draw["brightness_noise"] - 0.5,
            saturation=draw["saturation_noise"] * 2,
            contrast=draw["contrast_noise"] + 0.5,
        )
    assert draw["cutout_size"] == (int(height * 0.5 + 0.5), int(width * 0.5 + 0.5))
    return AugParams(
        batch=batch,
        **colour_fields,
        # The official translation reads pixel i + t (content moves by −t); gatscale's moves by +shift.
        shift_y=-draw["translation_h"].float() / height,
        shift_x=-draw["translation_w"].float() / width,
        cutout_y=draw["cutout_h"].float() / height,
        cutout_x=draw["cutout_w"].float() / width,
        cutout_size=0.5,
        flip=draw["flip_noise"] < 0.4,
    )


class Replay:
    """Feeds the official draws to gatscale's objective in the order it asks for them (`draws`)."""

    def __init__(self, params: list[AugParams], noise: list[list[torch.Tensor]],
                 eps: list[list[torch.Tensor]]) -> None:
        self.params, self.noise, self.eps = list(params), list(noise), list(eps)
        self.draws = objective.Draws(
            augment=lambda *args, **kwargs: self.params.pop(0),
            noise=lambda like, cfg, generator=None: mng.nest_noise(self.noise.pop(0), cfg),
            shift=self._shifted,
        )

    def _shifted(self, levels, sigma, generator=None):
        eps = self.eps.pop(0)
        assert len(eps) == len(levels)
        return [x.detach() + sigma * e for x, e in zip(levels, eps)]

    def done(self) -> bool:
        return not (self.params or self.noise or self.eps)


class RecordingCritic:
    """gatscale's D, recording the logits of every call."""

    def __init__(self, D) -> None:
        self.D, self.logits = D, []

    def __call__(self, x, y):
        logits, tokens = self.D(x, y)
        self.logits.append(logits)
        return logits, tokens

    def project(self, tokens):
        return self.D.project(tokens)


def _inputs(dtype: torch.dtype = torch.float32):
    inputs = GOLDEN["inputs"]
    return inputs["reals"].to(dtype), inputs["z"].to(dtype), inputs["labels"]


def _float64(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.double() for t in tensors]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_file_records_its_official_commit() -> None:
    assert re.fullmatch(r"[0-9a-f]{40}", GOLDEN["official_commit"])


def test_key_mapping_is_complete_and_fixed_tables_match() -> None:
    # Strict loads (in _nets): every gatscale weight has an official source and none is left over;
    # and no two official weights map to one name.
    _, G, D = _nets()
    for net, table, block_table, unused in (("G", G_KEYS, G_BLOCK_KEYS, G_UNUSED), ("D", D_KEYS, D_BLOCK_KEYS, set())):
        official = [key for key in GOLDEN["weights"][net] if key not in unused]
        assert len({_rename(key, table, block_table) for key in official}) == len(official), net
    fixed_g, fixed_d = GOLDEN["fixed"]["G"], GOLDEN["fixed"]["D"]
    _close(G.input_tokens, fixed_g["pos_embed"], "G position embedding")
    _close(D.pos_embed, fixed_d["pos_embed"], "D position embedding")
    signs = torch.tensor([-1.0, 1.0]).repeat(G.rope.cos.shape[-1] // 2)
    _close(G.rope.cos, fixed_g["feat_rope.freqs_cos"], "G RoPE cos")
    _close(G.rope.signed_sin, fixed_g["feat_rope.freqs_sin"] * signs, "G RoPE sin")
    _close(D.rope.cos[1:], fixed_d["feat_rope.freqs_cos"], "D RoPE cos")  # row 0: the cls token, not rotated
    _close(D.rope.signed_sin[1:], fixed_d["feat_rope.freqs_sin"] * signs, "D RoPE sin")


def test_generator_levels_discriminator_logits_and_projector() -> None:
    _, G, D = _nets()
    reals, z, labels = _inputs()
    outputs = GOLDEN["outputs"]
    with torch.no_grad():
        levels = G(z, labels)
        assert len(levels) == CONF["levels"]
        for k, level in enumerate(levels):
            _close(level, outputs["G_levels"][k], f"G level {k}")
        logits, tokens = D(torch.cat(levels, dim=1), labels)
        _close(logits, outputs["D_logits"], "D logits")
        _close(D.project(tokens), outputs["D_projected"], "REPA projector output")


@pytest.mark.parametrize("variant", ["color_on", "color_off"])
def test_d_step_matches_official(variant: str) -> None:
    colour = variant == "color_on"
    cfg, G, D = _nets(colour)
    G, D = G.double(), D.double()
    reals, z, labels = _inputs(torch.float64)
    draws, expected = GOLDEN["draws"]["d_step_draws"], GOLDEN["outputs"][variant]["d_step"]
    replay = Replay(
        [_aug_params(draws["real_aug"], colour), _aug_params(draws["fake_aug"], colour)],
        [_float64(draws["real_noise"]), _float64(draws["fake_noise"])],
        [_float64(draws["real_eps"]), _float64(draws["fake_eps"])],
    )
    with torch.no_grad():
        fakes = G(z, labels)
    D.requires_grad_(True)
    critic = RecordingCritic(D)
    total, terms = objective.discriminator_loss(critic, reals, fakes, labels, cfg, draws=replay.draws)
    total.backward()
    assert replay.done()
    # One gatscale pass: [reals, shifted reals, fakes, shifted fakes]; official calls: fakes,
    # reals, shifted reals, shifted fakes.
    (logits,) = critic.logits
    real, real_shifted, fake, fake_shifted = logits.split(reals.shape[0])
    for name, actual, want in zip(
        ("fake", "real", "shifted real", "shifted fake"), (fake, real, real_shifted, fake_shifted), expected["logits"]
    ):
        _close(actual, want, f"D logits, {name}")
    _close(terms["d_adv"], expected["d_adv"], "relativistic D loss")
    _close(terms["r1"], expected["r1"], "aR1")
    _close(terms["r2"], expected["r2"], "aR2")
    _close(total, expected["loss"], "D loss")
    grads = {"D.patch_embed.weight": D.patch_embed.weight.grad, "D.patch_embed.bias": D.patch_embed.bias.grad,
             "D.head.1.weight": D.head[1].weight.grad}
    for name, want in expected["grads"].items():
        _close(grads[name], want, f"gradient of {name}")


@pytest.mark.parametrize("variant", ["color_on", "color_off"])
def test_g_step_matches_official(variant: str) -> None:
    colour = variant == "color_on"
    cfg, G, D = _nets(colour)
    G, D = G.double(), D.double()
    reals, z, labels = _inputs(torch.float64)
    draws, expected = GOLDEN["draws"]["g_step_draws"], GOLDEN["outputs"][variant]["g_step"]
    replay = Replay(
        [_aug_params(draws["fake_aug"], colour), _aug_params(draws["real_aug"], colour)],
        [_float64(draws["fake_noise"]), _float64(draws["real_noise"])],
        [],
    )
    G.requires_grad_(True)
    critic = RecordingCritic(D)
    loss, _ = objective.generator_loss(critic, reals, G(z, labels), labels, cfg, draws=replay.draws)
    loss.backward()
    assert replay.done()
    for name, actual, want in zip(("fake", "real"), critic.logits, expected["logits"]):
        _close(actual, want, f"D logits, {name}")
    _close(loss, expected["loss"], "G loss")
    grads = {"G.mapping_net.0.weight": G.mapping_net[0].weight.grad,
             "G.heads.3.linear.weight": G.heads[3].linear.weight.grad}
    for name, want in expected["grads"].items():
        _close(grads[name], want, f"gradient of {name}")
