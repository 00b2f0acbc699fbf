"""How the learning rate follows the width (paper §4), one rule per `train.lr_rule`.

- constant:    eta_base everywhere (the naive baseline that makes wide models diverge).
- width_aware: eta_base * base_width / width (GAT's rule, applied to G and D with their own
               widths). A normalised input has E|x|^2 ∝ width, so a step of size eta moves a
               layer's output ∝ eta * width; holding eta * width fixed holds that speed fixed.
- sqrt:        eta_base * sqrt(base_width / width), the gentler alternative reviewers asked for.
- mup:         μP-style per-group LRs for Adam: hidden matrices (the 2-D weights inside the
               transformer blocks) get base_width / width, everything else (vectors, biases,
               norm gains, embeddings, input and output layers, mapping networks) keeps
               eta_base. GAT's rule is the same scaling applied to every parameter at once.

Pure arithmetic, so model.json's per-rule LRs, the sweeps and the analysis need no torch;
`gat.lr_rules.param_groups` splits a network's parameters by these rules.
"""
from __future__ import annotations

import math

from contract.errors import ConfigError

RULES: tuple[str, ...] = ("constant", "width_aware", "sqrt", "mup")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ConfigError(f"train.lr_rule={rule!r} is not one of: {', '.join(RULES)}")


def learning_rate(rule: str, width: int, base_lr: float, base_width: int) -> float:
    """The LR of a net of this width; for `mup` the LR of its hidden matrices."""
    _check_rule(rule)
    if rule == "constant":
        return base_lr
    if rule == "sqrt":
        return base_lr * math.sqrt(base_width / width)
    return base_lr * base_width / width
