"""Generator, discriminator, registry and `python -m gat.models`.

Paper-sized nets are only ever built on the meta device; real computation uses widths of 32.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from contract.config import ModelConfig, RunConfig, from_dict
from contract.errors import ConfigError
from contract.model_shape import describe, discriminator_size
from contract.sizes import MODELS, parse_size
from gat.models import build_discriminator, build_generator
from gat.models.__main__ import main
from gat.models.generator import stage_ends
from gat.models.layers import AxialRoPE, unpatchify
from contract.model_shape import discriminator_macs, generator_macs, generator_size

LATENT = dict(latent_channels=4, latent_size=8, num_classes=10)

# Spec §1.2 (ImageNet, 1000 classes, 32x32x4 latents): G params, D params incl. the REPA
# projector, and G forward GMACs at /2 and /4.
PAPER = {
    "S": (29.4e6, 39.2e6, 6.0, 1.4),
    "B": (116.8e6, 104.7e6, 23.0, 5.5),
    "L": (408.7e6, 323.0e6, 80.5, 19.5),
    "XL": (602.3e6, 467.7e6, 118.4, 28.8),
}


def tiny_config(**model: object) -> RunConfig:
    return from_dict({"model": {"width": 32, "depth": 4, "heads": 2, "patch": 2, **model}})


def tiny_generator(seed: int = 0, **model: object):
    torch.manual_seed(seed)
    return build_generator(tiny_config(**model), **LATENT)


def tiny_discriminator(seed: int = 0, repa_dim: int | None = 16):
    torch.manual_seed(seed)
    return build_discriminator(tiny_config(), repa_dim=repa_dim, **LATENT)


def inputs(batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 64, generator=generator), torch.randint(0, 10, (batch,), generator=generator)


# --- registry ---------------------------------------------------------------------------------


def _build_on_meta(name: str, repa_dim: int | None = 768):
    config = from_dict({"model": {"name": name}})
    with torch.device("meta"):
        G = build_generator(config, latent_channels=4, latent_size=32, num_classes=1000)
        D = build_discriminator(config, latent_channels=4, latent_size=32, num_classes=1000, repa_dim=repa_dim)
    return G, D


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registry_entry_builds_on_meta(name: str) -> None:
    size = MODELS[name]
    G, D = _build_on_meta(name)
    assert len(G.blocks) == len(D.blocks) == size.depth
    assert G.head_after == [size.depth * k // 4 for k in (1, 2, 3, 4)]
    assert all(head.linear.out_features == size.patch**2 * 4 for head in G.heads)
    assert G.input_tokens.shape == D.pos_embed.shape == (1, (32 // size.patch) ** 2, size.width)
    assert D.patch_embed.kernel_size == (size.patch, size.patch) and D.patch_embed.in_channels == 16
    assert G.blocks[0].attn.heads == D.blocks[0].attn.heads == size.heads


# Meta-device ops cost about a millisecond each, so full-depth forwards run for one entry per
# patch size (spanning the widths) rather than all twelve.
@pytest.mark.parametrize("name", ["GAT-XL/2", "GAT-B/4", "GAT-S/8"])
def test_registry_forward_shapes_on_meta(name: str) -> None:
    size = MODELS[name]
    tokens = (32 // size.patch) ** 2
    G, D = _build_on_meta(name)
    y = torch.zeros(2, dtype=torch.long, device="meta")
    outputs = G(torch.randn(2, 64, device="meta"), y)
    logits, hidden = D(torch.cat(outputs, dim=1), y)
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 32, 32)] * 4
    assert tuple(logits.shape) == (2,)
    assert tuple(hidden.shape) == (2, 1 + tokens, size.width)
    assert tuple(D.project(hidden).shape) == (2, 1 + tokens, 768)


def test_explicit_size_strings_parse() -> None:
    size = parse_size("w384-d12-h6-p2")
    assert (size.width, size.depth, size.heads, size.patch) == (384, 12, 6, 2)
    assert parse_size("GAT-XL/2") == MODELS["GAT-XL/2"] == parse_size("w1152-d28-h16-p2")


def test_unknown_name_names_the_field_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"model\.name.*GAT-S/2.*GAT-XL/8.*w384-d12-h6-p2"):
        parse_size("GAT-XXL/2")
    with pytest.raises(ConfigError, match=r"model\.name"):
        from_dict({"model": {"name": "gat-b/2"}})


def test_width_not_divisible_by_heads_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.width=100 is not divisible by model\.heads=3"):
        parse_size("w100-d2-h3-p2")
    with pytest.raises(ConfigError, match=r"model\.d_width=100 is not divisible by model\.d_heads=3"):
        discriminator_size(ModelConfig(d_width=100, d_heads=3))


def test_discriminator_size_falls_back_to_the_generator() -> None:
    config = from_dict({"model": {"name": "GAT-B/4", "d_width": 384, "d_heads": 6}})
    assert discriminator_size(config.model) == parse_size("w384-d12-h6-p4")
    info = describe(config)
    assert (info["g_width"], info["d_width"], info["d_depth"], info["patch"]) == (768, 384, 12, 4)
    assert info["lr"]["width_aware"] == pytest.approx({"G": 2e-4, "D": 4e-4})


@pytest.mark.parametrize("size", list(PAPER))
def test_paper_parameter_counts_and_gflops(size: str) -> None:
    g_params, d_params, gmacs_2, gmacs_4 = PAPER[size]
    info = describe(from_dict({"model": {"name": f"GAT-{size}/2"}}))
    assert info["generator_params"] == pytest.approx(g_params, rel=0.01)
    assert info["discriminator_params"] + info["discriminator_projector_params"] == pytest.approx(d_params, rel=0.01)
    assert info["generator_gflops"] == pytest.approx(gmacs_2, rel=0.01)
    at_4 = generator_macs(MODELS[f"GAT-{size}/4"], num_levels=4, latent_channels=4, latent_size=32) / 1e9
    assert at_4 == pytest.approx(gmacs_4, rel=0.01)


# Trainable parameters of the official GAT and GATD (hse1032/GAT 21a2dd0; ImageNet: 1000 classes,
# 4x32x32 latents, REPA projector for 768-d DINOv2 features), counted by building them there.
# The official G also carries timm's PatchEmbed `x_embedder` (width * (4 p^2 + 1) parameters),
# whose output it multiplies by 0.0: its gradient is exactly zero, so gatscale leaves it out.
OFFICIAL_TRAINABLE = {  # name: (G, D including its projector)
    "GAT-S/2": (29_263_040, 39_114_624),
    "GAT-B/2": (116_558_144, 104_480_256),
    "GAT-L/2": (408_486_432, 322_773_728),
    "GAT-XL/2": (601_956_224, 467_383_872),
    "GAT-B/8": (117_480_704, 105_217_536),
}


@pytest.mark.parametrize("name", list(OFFICIAL_TRAINABLE))
def test_exact_parameter_counts_match_the_official_networks(name: str) -> None:
    official_g, official_d = OFFICIAL_TRAINABLE[name]
    info = describe(from_dict({"model": {"name": name}}))
    size = MODELS[name]
    unused_patch_embed = size.width * (4 * size.patch**2 + 1)
    assert info["generator_params"] + unused_patch_embed == official_g
    assert info["discriminator_params"] + info["discriminator_projector_params"] == official_d


def test_gat_xl2_headline_numbers() -> None:
    info = describe(from_dict({"model": {"name": "GAT-XL/2"}}))
    assert round(info["generator_params"] / 1e6) == 602
    assert info["generator_gflops"] == pytest.approx(119, rel=0.01)  # CAT's table: 119
    assert info["tokens"] == 256 and info["mng_noise_levels"] == pytest.approx([0.885, 0.76, 0.51, 0.01])


_PER_SAMPLE = ("mapping_net", "modulation", "class_mapping")  # MLPs on w / class codes, not tokens


def _token_flops(counter: FlopCounterMode) -> int:
    """The counter's total less the per-sample MLPs, which the GFLOPs convention leaves out."""
    counts = counter.get_flop_counts()
    per_sample = sum(sum(ops.values()) for name, ops in counts.items() if name.split(".")[-1] in _PER_SAMPLE)
    return counter.get_total_flops() - per_sample


@pytest.mark.parametrize("depth", [4, 6])  # 6 blocks for 4 heads: unequal stages
def test_analytic_macs_match_torch_flop_counter(depth: int) -> None:
    config = tiny_config(depth=depth)
    with torch.device("meta"):
        G = build_generator(config, **LATENT)
        D = build_discriminator(config, repa_dim=16, **LATENT)
        with FlopCounterMode(display=False) as g_count:
            G(torch.randn(1, 64), torch.zeros(1, dtype=torch.long))
        with FlopCounterMode(display=False) as d_count:
            D(torch.randn(1, 16, 8, 8), torch.zeros(1, dtype=torch.long))
    size = generator_size(config.model)
    # The counter reports FLOPs = 2 x multiply-adds.
    assert _token_flops(g_count) == 2 * generator_macs(size, num_levels=4, latent_channels=4, latent_size=8)
    assert _token_flops(d_count) == 2 * discriminator_macs(size, in_channels=16, latent_size=8)


# --- generator --------------------------------------------------------------------------------


def test_stage_ends() -> None:
    assert stage_ends(12, 4) == [3, 6, 9, 12]
    assert stage_ends(28, 4) == [7, 14, 21, 28]
    assert stage_ends(10, 4) == [3, 5, 8, 10]
    assert stage_ends(4, 4) == [1, 2, 3, 4]
    with pytest.raises(ConfigError, match=r"mng\.levels=4 exceeds model\.depth=3"):
        build_generator(tiny_config(depth=3), **LATENT)


def test_outputs_accumulate_the_heads() -> None:
    G = tiny_generator(depth=6)
    z, y = inputs()
    with torch.no_grad():
        w = G.mapping(z, y)
        outputs, hidden = G.synthesize(w, return_hidden=True)
        levels = [unpatchify(head(hidden[end], w), 2, 4) for head, end in zip(G.heads, G.head_after)]
    assert len(outputs) == G.num_levels == 4 and len(hidden) == 7
    assert [tuple(o.shape) for o in outputs] == [(3, 4, 8, 8)] * 4
    for k, output in enumerate(outputs):
        torch.testing.assert_close(output, sum(levels[: k + 1]))
    assert not torch.allclose(outputs[0], outputs[-1])


def test_generator_ignores_nothing_but_w() -> None:
    G = tiny_generator()
    z, y = inputs()
    with torch.no_grad():
        same = G.synthesize(G.mapping(z, y))[-1]
        other_z = G.synthesize(G.mapping(z + 1, y))[-1]
        other_y = G.synthesize(G.mapping(z, (y + 1) % 10))[-1]
    assert not torch.allclose(same, other_z) and not torch.allclose(same, other_y)


def test_skip_block_leaves_that_block_out() -> None:
    G = tiny_generator()
    z, y = inputs()
    with torch.no_grad():
        w = G.mapping(z, y)
        full, hidden = G.synthesize(w, return_hidden=True)
        skipped, skipped_hidden = G.synthesize(w, skip_block=1, return_hidden=True)
    torch.testing.assert_close(skipped_hidden[1], hidden[1])
    torch.testing.assert_close(skipped_hidden[2], skipped_hidden[1])
    assert not torch.allclose(skipped[-1], full[-1])


def test_truncation_with_psi_one_gives_the_class_mean() -> None:
    G = tiny_generator()
    z, y = inputs(batch=6)
    beta = G.w_avg_beta
    with torch.no_grad():
        w = G.mapping(z, y)
        G.update_w_avg(w, y)
        for label in y.unique():
            # From zeros, one EMA step leaves (1 - beta) * the batch's class mean.
            torch.testing.assert_close(G.w_avg[label], (1 - beta) * w[y == label].mean(0))
        assert G.w_avg[[c for c in range(10) if c not in y.tolist()]].abs().sum() == 0
        truncated = G(z, y, psi=1.0)[-1]
        class_mean = G.synthesize(G.w_avg[y])[-1]
        untruncated = G(z, y)[-1]
    torch.testing.assert_close(truncated, class_mean)
    torch.testing.assert_close(untruncated, G.synthesize(w)[-1])
    torch.testing.assert_close(G.truncate(w, y, 0.5), w + 0.5 * (G.w_avg[y] - w))


def test_mng_off_keeps_the_heads_and_narrows_d() -> None:
    config = from_dict({"model": {"width": 32, "depth": 4, "heads": 2}, "mng": {"mode": "off"}})
    G = build_generator(config, **LATENT)
    D = build_discriminator(config, repa_dim=None, **LATENT)
    assert G.num_levels == len(G.heads) == 4
    assert D.patch_embed.in_channels == 4
    logits, _ = D(G(*inputs())[-1], inputs()[1])
    assert logits.shape == (3,)


def test_same_seed_same_weights_and_outputs() -> None:
    z, y = inputs()
    G1, G2, G3 = tiny_generator(seed=5), tiny_generator(seed=5), tiny_generator(seed=6)
    D1, D2 = tiny_discriminator(seed=5), tiny_discriminator(seed=5)
    for a, b in ((G1, G2), (D1, D2)):
        sd_a, sd_b = a.state_dict(), b.state_dict()
        assert sd_a.keys() == sd_b.keys()
        assert all(torch.equal(sd_a[key], sd_b[key]) for key in sd_a)
    with torch.no_grad():
        out1, out2, out3 = G1(z, y)[-1], G2(z, y)[-1], G3(z, y)[-1]
        assert torch.equal(out1, out2) and not torch.allclose(out1, out3)
        assert torch.equal(D1(out1.repeat(1, 4, 1, 1), y)[0], D2(out1.repeat(1, 4, 1, 1), y)[0])


def test_modulation_starts_small_and_zero_biased() -> None:
    G = tiny_generator()
    for block in G.blocks:
        linear = block.modulation[1]
        assert linear.bias.abs().sum() == 0
        # xavier bound at gain 0.1 for a 32 -> 128 layer
        assert linear.weight.abs().max() <= 0.1 * (6 / (32 + 128)) ** 0.5


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    z, y = inputs()
    grads = []
    for checkpointing in (False, True):
        G = tiny_generator(grad_checkpointing=checkpointing)
        G(z, y)[-1].square().mean().backward()
        grads.append([p.grad.clone() for p in G.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


# --- discriminator ----------------------------------------------------------------------------


def test_discriminator_outputs_and_projection() -> None:
    D = tiny_discriminator()
    x, y = torch.randn(3, 16, 8, 8), torch.tensor([0, 1, 2])
    logits, tokens = D(x, y)
    assert logits.shape == (3,) and tokens.shape == (3, 17, 32)
    assert D.project(tokens).shape == (3, 17, 16)
    assert not torch.allclose(D(x, torch.tensor([3, 4, 5]))[0], logits)  # the class enters the logit
    assert all(torch.allclose(block.scale_attn, torch.full((32,), 0.1)) for block in D.blocks)
    with pytest.raises(RuntimeError, match="REPA projector"):
        tiny_discriminator(repa_dim=None).project(tokens)


def test_rope_spares_the_cls_token_and_is_relative() -> None:
    rope = AxialRoPE(head_dim=8, grid=4, num_prefix=1)
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 17, 8)
    rotated = rope(q)
    torch.testing.assert_close(rotated[:, :, 0], q[:, :, 0])
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1))
    # A constant query/key: the score depends on the offset between tokens, not their places.
    token = lambda row, col: 1 + 4 * row + col  # noqa: E731 (after the cls token)
    score = lambda a, b: (rotated[0, 0, token(*a)] * rotated[0, 0, token(*b)]).sum()  # noqa: E731
    torch.testing.assert_close(score((0, 0), (1, 2)), score((2, 1), (3, 3)))
    assert not torch.allclose(score((0, 0), (1, 2)), score((0, 0), (2, 1)))


# --- describe and the CLI ---------------------------------------------------------------------

MODEL_JSON_KEYS = {
    "generator_params", "discriminator_params", "discriminator_projector_params", "generator_gflops",
    "discriminator_gflops", "mng_noise_levels", "g_width", "d_width", "g_depth", "d_depth", "patch",
    "tokens", "lr",
}


def test_cli_json_has_the_model_json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["w64-d4-h4-p4", "--json", "--base-lr", "1e-3", "--base-width", "32"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert MODEL_JSON_KEYS <= info.keys()
    assert info["tokens"] == 64 and info["g_width"] == 64
    assert info["lr"]["width_aware"]["G"] == pytest.approx(5e-4)
    assert info["lr"]["constant"] == {"G": 1e-3, "D": 1e-3}


def test_cli_table_and_bad_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["GAT-S/4"]) == 0
    table = capsys.readouterr().out
    assert "GAT-S/4" in table and "params" in table and "width_aware" in table
    assert main(["GAT-XXL/2"]) == 2
    captured = capsys.readouterr()
    assert "model.name" in captured.err and "Traceback" not in captured.err and captured.out == ""


def test_cmap_dim_sets_the_projection_head_and_its_cost() -> None:
    config = tiny_config(d_cmap_dim=64)
    with torch.device("meta"):
        D = build_discriminator(config, repa_dim=None, **LATENT)
        with FlopCounterMode(display=False) as d_count:
            D(torch.randn(1, 16, 8, 8), torch.zeros(1, dtype=torch.long))
    assert D.head[1].out_features == D.class_embed.embedding_dim == 64
    size = generator_size(config.model)
    assert _token_flops(d_count) == 2 * discriminator_macs(size, in_channels=16, latent_size=8, cmap_dim=64)
