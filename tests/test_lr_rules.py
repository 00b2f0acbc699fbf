"""The width → learning-rate rules (paper §4) and their AdamW parameter groups."""
from __future__ import annotations

import math

import pytest
import torch

from contract.config import from_dict
from contract.errors import ConfigError
from contract.lr_rules import RULES, learning_rate
from gat.lr_rules import param_groups
from gat.models import build_discriminator, build_generator

WIDTHS = {"S": 384, "B": 768, "L": 1024, "XL": 1152}


def test_width_aware_matches_the_paper_table() -> None:
    got = {size: learning_rate("width_aware", width, 2e-4, 768) for size, width in WIDTHS.items()}
    assert got == pytest.approx({"S": 4e-4, "B": 2e-4, "L": 1.5e-4, "XL": 1.3333e-4}, rel=1e-4)


def test_constant_sqrt_and_mup_hidden_rates() -> None:
    assert all(learning_rate("constant", w, 2e-4, 768) == 2e-4 for w in WIDTHS.values())
    assert learning_rate("sqrt", 384, 2e-4, 768) == pytest.approx(2e-4 * math.sqrt(2))
    assert learning_rate("sqrt", 3072, 2e-4, 768) == pytest.approx(1e-4)
    assert learning_rate("mup", 1536, 2e-4, 768) == pytest.approx(1e-4)
    # At the base width every rule is the base LR.
    assert {learning_rate(rule, 768, 2e-4, 768) for rule in RULES} == {2e-4}


def test_unknown_rule_names_the_field_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"train\.lr_rule='linear' is not one of: constant, width_aware, sqrt, mup"):
        learning_rate("linear", 768, 2e-4, 768)
    with pytest.raises(ConfigError, match=r"train\.lr_rule"):
        param_groups("linear", torch.nn.Linear(2, 2), 768, 2e-4, 768)


def _tiny_models() -> list[torch.nn.Module]:
    config = from_dict({"model": {"width": 32, "depth": 4, "heads": 2}})
    sizes = dict(latent_channels=4, latent_size=8, num_classes=10)
    return [build_generator(config, **sizes), build_discriminator(config, repa_dim=16, **sizes)]


@pytest.mark.parametrize("rule", ["constant", "width_aware", "sqrt"])
def test_global_rules_give_one_group(rule: str) -> None:
    for model in _tiny_models():
        (group,) = param_groups(rule, model, 32, 2e-4, 768)
        assert group["name"] == "all"
        assert group["lr"] == learning_rate(rule, 32, 2e-4, 768)
        assert len(group["params"]) == len(list(model.parameters()))


def test_mup_scales_only_the_blocks_matrices() -> None:
    for model in _tiny_models():
        groups = {group["name"]: group for group in param_groups("mup", model, 32, 2e-4, 768)}
        assert groups["hidden"]["lr"] == pytest.approx(2e-4 * 768 / 32)
        assert groups["other"]["lr"] == 2e-4
        names = {id(p): name for name, p in model.named_parameters()}
        hidden = {names[id(p)] for p in groups["hidden"]["params"]}
        other = {names[id(p)] for p in groups["other"]["params"]}
        assert hidden | other == set(names.values()) and not hidden & other
        # attention, FFN and (for G) modulation matrices are hidden ...
        assert "blocks.0.attn.qkv.weight" in hidden and "blocks.1.ffn.w3.weight" in hidden
        # ... biases, norm gains, LayerScale, embeddings, input/output layers and mappings are not.
        assert all(
            not name.startswith("blocks.") or name.endswith(("bias", "norm.weight", "norm1.weight",
                                                             "norm2.weight", "scale_attn", "scale_ffn"))
            for name in other
        )
        assert any(name.startswith(("heads.", "head.")) for name in other)
        assert any("mapping" in name for name in other)


def test_frozen_parameters_are_left_out() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    (group,) = param_groups("width_aware", model, 32, 2e-4, 768)
    assert len(group["params"]) == 3
