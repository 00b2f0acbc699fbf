"""AdamW parameter groups for each width → learning-rate rule (the rules: `contract.lr_rules`).

`mup` splits a network into its hidden matrices (the 2-D weights inside the transformer
blocks, at the rule's LR) and everything else (at the base LR); the other rules give every
parameter the rule's LR.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

# The rules live in the contract (torch-free: model.json, sweeps and analysis use them); callers
# import RULES and learning_rate from contract.lr_rules, and this module uses learning_rate only.
from contract.lr_rules import learning_rate

if TYPE_CHECKING:  # torch only for the hints: the models passed in bring it
    from torch import nn

__all__ = ["param_groups"]


def _is_hidden_matrix(name: str, param: nn.Parameter) -> bool:
    # Every module here keeps its transformer blocks in a ModuleList called `blocks`.
    return name.startswith("blocks.") and param.ndim >= 2


def param_groups(rule: str, model: nn.Module, width: int, base_lr: float, base_width: int) -> list[dict]:
    """AdamW parameter groups (keys "params", "lr", "name") for the trainable parameters."""
    lr = learning_rate(rule, width, base_lr, base_width)
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if rule != "mup":
        return [{"name": "all", "lr": lr, "params": [p for _, p in params]}]
    hidden = [p for name, p in params if _is_hidden_matrix(name, p)]
    other = [p for name, p in params if not _is_hidden_matrix(name, p)]
    groups = [{"name": "hidden", "lr": lr, "params": hidden}, {"name": "other", "lr": base_lr, "params": other}]
    return [group for group in groups if group["params"]]
