"""Diagnostics: output speed, per-block update ratios and ablations on a fixed probe."""
from __future__ import annotations

import copy

import pytest
import torch

from gat import diagnostics
from gat.models import registry
from conftest import SyntheticLatents, tiny_config

DIMS = {"latent_channels": 4, "latent_size": 8, "num_classes": 10}


@pytest.fixture
def nets():
    config = tiny_config()
    torch.manual_seed(0)
    G = registry.build_generator(config, **DIMS)
    D = registry.build_discriminator(config, **DIMS, repa_dim=None)
    probe = diagnostics.make_probe(SyntheticLatents(), config, G.z_dim, torch.device("cpu"))
    return G, D, probe


def test_relative_change():
    old = torch.tensor([3.0, 4.0])
    assert diagnostics.relative_change(old, old) == 0.0
    assert diagnostics.relative_change(old * 1.1, old) == pytest.approx(0.1)
    assert diagnostics.relative_change(torch.zeros(2), torch.zeros(2)) == 0.0


def test_measure_reports_every_key_per_block(nets):
    G, D, probe = nets
    result = diagnostics.measure(G, D, copy.deepcopy(G), copy.deepcopy(D), probe)
    assert result["g_output_change"] == 0.0 and result["d_logit_change"] == 0.0
    assert len(result["g_block_update_ratio"]) == len(result["g_block_ablation"]) == len(G.blocks)
    assert all(r > 0 for r in result["g_block_update_ratio"])
    assert result["g_act_std"] > 0 and result["d_act_std"] > 0


def test_output_change_sees_a_weight_update(nets):
    G, D, probe = nets
    G_prev, D_prev = copy.deepcopy(G), copy.deepcopy(D)
    with torch.no_grad():
        for p in list(G.parameters()) + list(D.parameters()):
            p.mul_(1.01)
    result = diagnostics.measure(G, D, G_prev, D_prev, probe)
    assert result["g_output_change"] > 0 and result["d_logit_change"] > 0


def test_an_identity_block_has_zero_update_and_ablation(nets):
    G, D, probe = nets
    with torch.no_grad():  # zero modulation: scale and gate 0, the block passes its input through
        G.blocks[0].modulation[1].weight.zero_()
        G.blocks[0].modulation[1].bias.zero_()
    result = diagnostics.measure(G, D, G, D, probe)
    assert result["g_block_update_ratio"][0] == 0.0
    assert result["g_block_ablation"][0] == 0.0
    assert result["g_block_ablation"][1] > 0


def test_probe_is_a_function_of_the_seed():
    config = tiny_config()
    a = diagnostics.make_probe(SyntheticLatents(), config, 32, torch.device("cpu"))
    b = diagnostics.make_probe(SyntheticLatents(), config, 32, torch.device("cpu"))
    assert torch.equal(a.z, b.z) and torch.equal(a.d_input, b.d_input) and torch.equal(a.y, b.y)
    assert a.d_input.shape == (config.eval.probe_batch, 16, 8, 8)  # K=4 levels of 4 channels
